"""The coordination app's own job: ``jobrun_retention`` (apps/coordination/retention.py)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings

from apps.coordination.fencing import Tick
from apps.coordination.registry import job
from apps.coordination.retention import prune

logger = logging.getLogger(__name__)


@job(name="jobrun_retention", every=settings.JOB_JOBRUN_RETENTION_EVERY)
def jobrun_retention(tick: Tick) -> None:
    """Fold ticks older than JOBRUN_RETENTION_DAYS into daily aggregates, in bounded batches, each
    batch one fenced transaction (a deposed leader stops after the batch it is in)."""
    done = prune(retention=timedelta(days=settings.JOBRUN_RETENTION_DAYS), atomic=tick.fenced)
    if done.ticks:
        logger.info(
            "jobrun_retention (%s, epoch %d): %d ticks folded into daily aggregates in %d batches",
            tick.holder,
            tick.epoch,
            done.ticks,
            done.batches,
        )
