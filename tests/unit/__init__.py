"""Unit tests: one module's behaviour, in process, no server and no pipeline run."""
