"""channel_layer_gc: expired messages and memberships go, live ones stay, only inside its term."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from apps.coordination.fencing import StaleEpoch, Tick, raise_epoch
from apps.coordination.registry import registered_jobs
from apps.pglayer.expiry import collect_expired
from apps.pglayer.jobs import channel_layer_gc
from apps.pglayer.models import GroupMembership, Message

pytestmark = pytest.mark.django_db


def _rows(*, expired: int, live: int) -> None:
    now = timezone.now()
    past, future = now - datetime.timedelta(seconds=1), now + datetime.timedelta(hours=1)
    Message.objects.bulk_create(
        [Message(channel="t:c%d" % n, body=b"x", expires=past) for n in range(expired)]
        + [Message(channel="t:live%d" % n, body=b"x", expires=future) for n in range(live)]
    )
    GroupMembership.objects.bulk_create(
        [GroupMembership(group="t:g", channel="t:c%d" % n, expires=past) for n in range(expired)]
        + [GroupMembership(group="t:g", channel="t:live%d" % n, expires=future) for n in range(live)]
    )


def test_the_job_is_registered_every_minute() -> None:
    spec = next(spec for spec in registered_jobs() if spec.name == "channel_layer_gc")
    assert spec.every == 60
    assert spec.func is channel_layer_gc


def test_gc_deletes_expired_rows_in_batches_and_keeps_live_ones() -> None:
    raise_epoch(name="lease", epoch=1, holder="me")
    _rows(expired=25, live=3)
    done = collect_expired(Tick(job="channel_layer_gc", holder="me", lease="lease", epoch=1), batch=10)
    assert (done.messages, done.memberships) == (25, 25)
    assert sorted(Message.objects.values_list("channel", flat=True)) == ["t:live0", "t:live1", "t:live2"]
    assert GroupMembership.objects.count() == 3


def test_gc_of_a_stale_leader_deletes_nothing() -> None:
    raise_epoch(name="lease", epoch=2, holder="new")
    _rows(expired=5, live=0)
    with pytest.raises(StaleEpoch):
        channel_layer_gc(Tick(job="channel_layer_gc", holder="old", lease="lease", epoch=1))
    assert Message.objects.count() == 5
