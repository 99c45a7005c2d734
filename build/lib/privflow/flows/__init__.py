"""Prefect orchestration of the DVC pipeline. Thin: the logic lives in components/.

Embedded defaults, set before Prefect is imported: Prefect's home (its SQLite database and
logs) inside the project's git-ignored .privflow/, and no telemetry (the machines privflow
runs on are often offline, and Prefect logs a name-resolution error for every attempt).
"""

import os
from pathlib import Path

os.environ.setdefault("PREFECT_HOME", str(Path(".privflow/prefect").resolve()))
# Prefect makes only the last folder of its home; on a fresh clone .privflow/ is missing too.
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary API server gets 20 s to start by default; two runs starting at once on a busy
# 2-core machine (a schedule firing during an on-demand run) each need longer (seen in CI).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
