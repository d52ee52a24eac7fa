"""Test-wide settings."""

import torch as th

# The tests use tiny networks, where a second intra-op thread gains little; on a loaded 2-core machine each
# parallel region can instead wait a whole scheduler slice for that thread. One thread keeps the suite fast and
# its timings steady.
th.set_num_threads(1)
