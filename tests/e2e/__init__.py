"""End-to-end tests: a project run as a user runs it (`privflow run`, `dvc repro`, an installed wheel)."""
