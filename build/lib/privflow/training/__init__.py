"""DP training: budget charge, the loop, checkpoints, baseline, DPDDP."""
