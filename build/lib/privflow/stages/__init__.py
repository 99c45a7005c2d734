"""The pipeline's stages: thin shells over the library, one per dvc.yaml stage.

Run as `python -m privflow.stages.<stage>` (dvc.yaml's commands). Under `privflow run` a
stage host has the heavy libraries imported already: the command hands itself over to it
here, before its module imports anything (privflow.stagehost)."""

from privflow.stagehost import hand_off

hand_off()
