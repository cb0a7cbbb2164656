"""A long job of many fenced batches, for the SIGTERM-under-load test (LEADER_EXTRA_JOB_MODULES).

Each tick does 100 batches of 50 ms (5 s in all), like cmdb_sync over many workspaces: a term that
ends mid-tick must stop it at the next batch, not after the whole tick.
"""

from __future__ import annotations

import time

from apps.coordination.fencing import Tick
from apps.coordination.registry import job


@job(name="test_batches", every=0.1)
def batches(tick: Tick) -> None:
    for _ in range(100):
        # A fenced transaction per batch (it writes nothing: the heartbeat job writes the fence row,
        # and two jobs updating one row under FOR SHARE would deadlock each other).
        with tick.fenced():
            time.sleep(0.05)
