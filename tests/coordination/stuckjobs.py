"""A job that ignores being asked to stop, for the grace-period test (LEADER_EXTRA_JOB_MODULES)."""

from __future__ import annotations

import time

from apps.coordination.fencing import Tick
from apps.coordination.registry import job


@job(name="test_stuck", every=0.1)
def stuck(tick: Tick) -> None:
    time.sleep(120)  # a hung call: nothing in the tick can interrupt it
