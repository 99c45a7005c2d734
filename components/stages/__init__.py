"""The pipeline's stages: thin shells over the library, one per dvc.yaml stage."""
