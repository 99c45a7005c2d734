"""privflow stage logic: plain Python, no Prefect. One module per DVC stage."""
