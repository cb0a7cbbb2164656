from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from apps.coordination.fencing import StaleEpoch, Tick, raise_epoch
from apps.coordination.registry import registered_jobs
from apps.hub import actions, drafts
from apps.hub.jobs import cleanup, lock_draft_cleanup
from apps.hub.models import Draft, EditingSession, TakeoverRequest
from apps.workspaces.models import Workspace
from tests.hub.conftest import Inbox

pytestmark = pytest.mark.django_db

LEASE = "hub-test-lease"


@pytest.fixture
def tick() -> Tick:
    raise_epoch(name=LEASE, epoch=5, holder="leader-a")
    return Tick(job="lock_draft_cleanup", holder="leader-a", lease=LEASE, epoch=5)


def _open(user: User, workspace: Workspace, address: str) -> EditingSession:
    return actions.do_open_session(user=user, workspace=workspace, resource_address=address)


def _age(session: EditingSession, seconds: float) -> None:
    EditingSession.objects.filter(pk=session.pk).update(last_seen_at=timezone.now() - timedelta(seconds=seconds))


def test_the_job_is_registered_every_minute() -> None:
    spec = {s.name: s for s in registered_jobs()}["lock_draft_cleanup"]
    assert spec.every == 60 and spec.func is lock_draft_cleanup


def test_stale_sessions_end_and_are_told_fresh_ones_stay(
    tick: Tick,
    workspace: Workspace,
    alice: User,
    bob: User,
    settings: Any,
    inbox: Callable[[UUID], Inbox],
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.HUB_SESSION_TIMEOUT = 120
    stale, fresh = _open(alice, workspace, "a.one"), _open(bob, workspace, "a.two")
    _age(stale, 121)
    _age(fresh, 119)
    stale_inbox, fresh_inbox = inbox(stale.session_id), inbox(fresh.session_id)

    with django_capture_on_commit_callbacks(execute=True):
        lock_draft_cleanup(tick)

    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.active, stale.ended_reason) == (False, "expired")
    assert fresh.active
    assert stale_inbox.events() == [{"type": "session.ended", "session_id": str(stale.session_id), "reason": "expired"}]
    assert fresh_inbox.events() == []


def test_a_stale_editor_frees_the_resource_for_its_waiters(
    tick: Tick,
    workspace: Workspace,
    alice: User,
    bob: User,
    inbox: Callable[[UUID], Inbox],
    django_capture_on_commit_callbacks: Any,
) -> None:
    editor, waiting = _open(alice, workspace, "a.one"), _open(bob, workspace, "a.one")
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    _age(editor, 10_000)
    waiting_inbox = inbox(waiting.session_id)

    with django_capture_on_commit_callbacks(execute=True):
        cleanup(tick, now=request.created_at + timedelta(seconds=1))

    request.refresh_from_db()
    assert request.status == "expired"
    [event] = waiting_inbox.events()
    assert (event["type"], event["reason"]) == ("takeover.expired", "editor_left")
    assert actions.do_claim_session(user=bob, session_id=waiting.session_id).mode == "editor"


def test_unanswered_requests_expire_and_both_sides_are_told(
    tick: Tick,
    workspace: Workspace,
    alice: User,
    bob: User,
    settings: Any,
    inbox: Callable[[UUID], Inbox],
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.HUB_TAKEOVER_REQUEST_TIMEOUT = 60
    editor, waiting = _open(alice, workspace, "a.one"), _open(bob, workspace, "a.one")
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    editor_inbox, waiting_inbox = inbox(editor.session_id), inbox(waiting.session_id)

    with django_capture_on_commit_callbacks(execute=True):
        cleanup(tick, now=request.created_at + timedelta(seconds=59))
    request.refresh_from_db()
    assert request.status == "pending"

    # Sessions are kept alive meanwhile: only the request is old.
    for session in (editor, waiting):
        actions.do_heartbeat(
            user=session.user, session_id=session.session_id, now=request.created_at + timedelta(seconds=60)
        )
    with django_capture_on_commit_callbacks(execute=True):
        cleanup(tick, now=request.created_at + timedelta(seconds=61))

    request.refresh_from_db()
    assert request.status == "expired" and request.responded_at is not None
    for box in (editor_inbox, waiting_inbox):
        [event] = box.events()
        assert (event["type"], event["request_id"], event["reason"]) == ("takeover.expired", request.pk, "unanswered")
    editor.refresh_from_db()
    assert editor.active and editor.mode == "editor"


def test_answered_requests_are_left_alone(tick: Tick, workspace: Workspace, alice: User, bob: User) -> None:
    _open(alice, workspace, "a.one")
    waiting = _open(bob, workspace, "a.one")
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    actions.do_respond_takeover(user=alice, request_id=request.pk, approve=False)
    cleanup(tick, now=request.created_at + timedelta(days=1))
    request.refresh_from_db()
    assert request.status == "rejected"


def test_expired_drafts_are_deleted_live_ones_kept(tick: Tick, workspace: Workspace, alice: User) -> None:
    now = timezone.now()
    old = drafts.do_save_draft(user=alice, workspace=workspace, resource_address="a.old", content={}, now=now)
    live = drafts.do_save_draft(
        user=alice, workspace=workspace, resource_address="a.new", content={}, now=now + timedelta(hours=1)
    )
    cleanup(tick, now=old.expires_at)
    assert list(Draft.objects.values_list("pk", flat=True)) == [live.pk]


def test_a_tick_of_a_stale_term_writes_nothing_and_announces_nothing(
    tick: Tick,
    workspace: Workspace,
    alice: User,
    bob: User,
    inbox: Callable[[UUID], Inbox],
    django_capture_on_commit_callbacks: Any,
) -> None:
    editor, waiting = _open(alice, workspace, "a.one"), _open(bob, workspace, "a.one")
    actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    _age(editor, 10_000)
    drafts.do_save_draft(user=alice, workspace=workspace, resource_address="a.one", content={})
    raise_epoch(name=LEASE, epoch=6, holder="leader-b")
    editor_inbox = inbox(editor.session_id)

    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(StaleEpoch):
        cleanup(tick, now=timezone.now() + timedelta(days=30))

    assert callbacks == [] and editor_inbox.events() == []
    editor.refresh_from_db()
    assert editor.active
    assert TakeoverRequest.objects.get().status == "pending"
    assert Draft.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_expiry_actions_refuse_to_run_outside_a_transaction() -> None:
    with pytest.raises(RuntimeError, match="fenced transaction"):
        actions.do_expire_stale_sessions(now=timezone.now(), max_age=60)
