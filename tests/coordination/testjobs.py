"""A job for multi-process tests only, registered when LEADER_EXTRA_JOB_MODULES names this module.

It ticks every 0.1 s and makes one fenced write, so handover and fencing are visible in JobRun
within a fraction of a second.
"""

from __future__ import annotations

from apps.coordination.fencing import Tick
from apps.coordination.models import Fence
from apps.coordination.registry import job


@job(name="test_heartbeat", every=0.1)
def heartbeat(tick: Tick) -> None:
    with tick.fenced():
        Fence.objects.filter(name=tick.lease).update(holder_identity=tick.holder)
