from __future__ import annotations

import pytest

from apps.coordination.fencing import StaleEpoch, Tick, current_epoch, raise_epoch
from apps.coordination.models import JobRun

pytestmark = pytest.mark.django_db


def test_epoch_only_ever_increases() -> None:
    assert raise_epoch(name="lease", epoch=3, holder="a")
    assert not raise_epoch(name="lease", epoch=2, holder="b")
    assert current_epoch("lease") == 3


def test_a_tick_with_a_stale_epoch_writes_nothing() -> None:
    raise_epoch(name="lease", epoch=4, holder="new")
    stale = Tick(job="j", holder="old", lease="lease", epoch=3)
    with pytest.raises(StaleEpoch), stale.fenced():
        JobRun.objects.create(job="j", holder="old", epoch=3, started_at="2026-01-01T00:00:00Z")
    assert not JobRun.objects.exists()


def test_a_tick_of_the_current_epoch_commits() -> None:
    raise_epoch(name="lease", epoch=4, holder="new")
    with Tick(job="j", holder="new", lease="lease", epoch=4).fenced():
        JobRun.objects.create(job="j", holder="new", epoch=4, started_at="2026-01-01T00:00:00Z")
    assert JobRun.objects.count() == 1


def test_a_tick_without_any_fence_row_is_stale() -> None:
    with pytest.raises(StaleEpoch), Tick(job="j", holder="x", lease="never-acquired", epoch=1).fenced():
        pass
