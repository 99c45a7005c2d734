"""privflow stage logic: plain Python, no Prefect. One module per DVC stage."""

import os

# OpenMP threads that finish a parallel region wait passively (asleep) instead of spinning:
# torch's CPU kernels run on GNU OpenMP, whose idle threads otherwise spin for a while after
# every region, holding a core. The processes privflow starts side by side share the cores
# already (privflow.stagehost.share_cores); two runs at once, or a run beside other work, do
# not, and take each other's cores: measured here, two DP trainings at once took 11.5-15 s each
# spinning against 3.5-4.3 s passive, and one alone 3.4 against 3.0 s (README). Read by libgomp
# when torch loads it, hence here, before any privflow module imports torch; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
