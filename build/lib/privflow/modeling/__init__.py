"""Model presets, compression and export, prediction."""
