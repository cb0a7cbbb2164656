from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.hub import actions
from apps.hub.models import EditingSession, TakeoverRequest
from apps.workspaces.models import Workspace
from tests.hub.conftest import Inbox

pytestmark = pytest.mark.django_db

ADDR = 'aws_instance.web["a"]'


def _open(user: User, workspace: Workspace, address: str = ADDR) -> EditingSession:
    return actions.do_open_session(user=user, workspace=workspace, resource_address=address)


@pytest.fixture
def committed(django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """Run an action and then its on_commit callbacks, as a real commit would."""

    def run(func: Callable[..., Any], **kwargs: Any) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return func(**kwargs)

    return run


def test_first_opener_edits_and_later_ones_wait(workspace: Workspace, alice: User, bob: User) -> None:
    first = _open(alice, workspace)
    second = _open(bob, workspace)
    other_resource = _open(bob, workspace, "aws_s3_bucket.logs")
    assert (first.mode, second.mode, other_resource.mode) == ("editor", "waiting", "editor")


def test_the_database_refuses_a_second_editor_of_a_resource(workspace: Workspace, alice: User, bob: User) -> None:
    _open(alice, workspace)
    with pytest.raises(IntegrityError, match="one_editor_per_resource"), transaction.atomic():
        EditingSession.objects.create(workspace=workspace, resource_address=ADDR, user=bob, mode="editor")


def test_a_takeover_request_notifies_only_the_editor(
    workspace: Workspace, alice: User, bob: User, inbox: Callable[[UUID], Inbox], committed: Any
) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    editor_inbox, waiting_inbox = inbox(editor.session_id), inbox(waiting.session_id)

    request, created = committed(
        actions.do_request_takeover, user=bob, session_id=waiting.session_id, message="need to fix it"
    )

    assert created and request.status == "pending" and request.session == editor
    [event] = editor_inbox.events()
    assert event["type"] == "takeover.requested"
    assert event["request_id"] == request.pk
    assert event["requester"] == {"id": bob.pk, "username": "bob"}
    assert event["message"] == "need to fix it"
    assert event["resource_address"] == ADDR
    assert waiting_inbox.events() == []


def test_asking_twice_returns_the_pending_request_without_a_second_event(
    workspace: Workspace, alice: User, bob: User, inbox: Callable[[UUID], Inbox], committed: Any
) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    editor_inbox = inbox(editor.session_id)
    first, _ = committed(actions.do_request_takeover, user=bob, session_id=waiting.session_id)
    again, created = committed(actions.do_request_takeover, user=bob, session_id=waiting.session_id)
    assert not created and again.pk == first.pk
    assert editor_inbox.types() == ["takeover.requested"]


def test_a_request_needs_an_own_waiting_session_and_an_editor(workspace: Workspace, alice: User, bob: User) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    with pytest.raises(actions.Conflict, match="already edits"):
        actions.do_request_takeover(user=alice, session_id=editor.session_id)
    with pytest.raises(actions.NotFound):
        actions.do_request_takeover(user=alice, session_id=waiting.session_id)
    with pytest.raises(actions.NotFound):
        actions.do_request_takeover(user=bob, session_id=uuid4())
    actions.do_close_session(user=alice, session_id=editor.session_id)
    with pytest.raises(actions.Conflict, match="nobody edits"):
        actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    assert not TakeoverRequest.objects.exists()


def test_approval_hands_the_resource_over_and_tells_both_sides(
    workspace: Workspace, alice: User, bob: User, inbox: Callable[[UUID], Inbox], committed: Any
) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    editor_inbox, waiting_inbox = inbox(editor.session_id), inbox(waiting.session_id)

    answered = committed(actions.do_respond_takeover, user=alice, request_id=request.pk, approve=True)

    assert answered.status == "approved" and answered.responded_at is not None
    editor.refresh_from_db()
    waiting.refresh_from_db()
    assert (editor.active, editor.ended_reason) == (False, "taken_over")
    assert (waiting.active, waiting.mode) == (True, "editor")
    [approved] = waiting_inbox.events()
    assert approved["type"] == "takeover.approved"
    assert approved["request_id"] == request.pk and approved["mode"] == "editor"
    [ended] = editor_inbox.events()
    assert ended == {
        "type": "session.ended",
        "session_id": str(editor.session_id),
        "reason": "taken_over",
        "by": {"id": alice.pk, "username": "alice"},
    }


def test_rejection_keeps_the_editor_and_tells_the_requester(
    workspace: Workspace, alice: User, bob: User, inbox: Callable[[UUID], Inbox], committed: Any
) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    editor_inbox, waiting_inbox = inbox(editor.session_id), inbox(waiting.session_id)

    answered = committed(actions.do_respond_takeover, user=alice, request_id=request.pk, approve=False)

    assert answered.status == "rejected"
    editor.refresh_from_db()
    assert (editor.active, editor.mode) == (True, "editor")
    assert waiting_inbox.types() == ["takeover.rejected"]
    assert editor_inbox.events() == []


def test_only_the_editor_answers_and_only_once(workspace: Workspace, alice: User, bob: User, carol: User) -> None:
    _open(alice, workspace)
    waiting = _open(bob, workspace)
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    with pytest.raises(actions.NotAllowed):
        actions.do_respond_takeover(user=bob, request_id=request.pk, approve=True)
    with pytest.raises(actions.NotFound):
        actions.do_respond_takeover(user=carol, request_id=request.pk, approve=True)
    with pytest.raises(actions.NotFound):
        actions.do_respond_takeover(user=alice, request_id=request.pk + 1000, approve=True)
    actions.do_respond_takeover(user=alice, request_id=request.pk, approve=False)
    with pytest.raises(actions.Conflict, match="already rejected"):
        actions.do_respond_takeover(user=alice, request_id=request.pk, approve=True)


def test_status_is_visible_to_both_sides_and_to_nobody_else(
    workspace: Workspace, alice: User, bob: User, carol: User
) -> None:
    _open(alice, workspace)
    waiting = _open(bob, workspace)
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    assert actions.get_takeover_request(user=alice, request_id=request.pk).status == "pending"
    assert actions.get_takeover_request(user=bob, request_id=request.pk).status == "pending"
    with pytest.raises(actions.NotFound):
        actions.get_takeover_request(user=carol, request_id=request.pk)


def test_a_requester_who_leaves_withdraws_its_request(
    workspace: Workspace, alice: User, bob: User, inbox: Callable[[UUID], Inbox], committed: Any
) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    editor_inbox = inbox(editor.session_id)

    committed(actions.do_close_session, user=bob, session_id=waiting.session_id)

    request.refresh_from_db()
    assert request.status == "expired"
    [event] = editor_inbox.events()
    assert (event["type"], event["reason"]) == ("takeover.expired", "requester_left")
    with pytest.raises(actions.Conflict, match="already expired"):
        actions.do_respond_takeover(user=alice, request_id=request.pk, approve=True)
    editor.refresh_from_db()
    assert editor.active


def test_an_editor_who_leaves_expires_the_requests_and_the_waiter_can_claim(
    workspace: Workspace, alice: User, bob: User, inbox: Callable[[UUID], Inbox], committed: Any
) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    request, _ = actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    editor_inbox, waiting_inbox = inbox(editor.session_id), inbox(waiting.session_id)

    closed = committed(actions.do_close_session, user=alice, session_id=editor.session_id)
    again = committed(actions.do_close_session, user=alice, session_id=editor.session_id)

    assert (closed.active, closed.ended_reason, again.ended_reason) == (False, "closed", "closed")
    assert editor_inbox.types() == ["session.ended"]
    [event] = waiting_inbox.events()
    assert (event["type"], event["reason"], event["request_id"]) == ("takeover.expired", "editor_left", request.pk)
    claimed = actions.do_claim_session(user=bob, session_id=waiting.session_id)
    assert claimed.mode == "editor"


def test_claiming_a_resource_someone_edits_is_refused(workspace: Workspace, alice: User, bob: User) -> None:
    _open(alice, workspace)
    waiting = _open(bob, workspace)
    with pytest.raises(actions.Conflict, match="someone else edits"):
        actions.do_claim_session(user=bob, session_id=waiting.session_id)
    waiting.refresh_from_db()
    assert waiting.mode == "waiting"


def test_force_needs_the_permission(workspace: Workspace, alice: User, bob: User) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    with pytest.raises(actions.NotAllowed, match=r"hub\.force_takeover"):
        actions.do_force_takeover(user=bob, session_id=waiting.session_id)
    editor.refresh_from_db()
    assert editor.active and not TakeoverRequest.objects.exists()


def test_force_ends_the_editor_and_expires_the_other_requests(
    workspace: Workspace, alice: User, bob: User, carol: User, inbox: Callable[[UUID], Inbox], committed: Any
) -> None:
    editor, bob_waiting, carol_waiting = _open(alice, workspace), _open(bob, workspace), _open(carol, workspace)
    bob_request, _ = actions.do_request_takeover(user=bob, session_id=bob_waiting.session_id)
    editor_inbox, bob_inbox = inbox(editor.session_id), inbox(bob_waiting.session_id)

    forced = committed(actions.do_force_takeover, user=carol, session_id=carol_waiting.session_id, message="outage")

    assert forced.status == "forced" and forced.requester == carol
    editor.refresh_from_db()
    carol_waiting.refresh_from_db()
    bob_request.refresh_from_db()
    assert (editor.active, editor.ended_reason) == (False, "forced")
    assert carol_waiting.mode == "editor"
    assert bob_request.status == "expired"
    [ended] = editor_inbox.events()
    assert ended["type"] == "session.ended" and ended["reason"] == "forced"
    assert ended["by"] == {"id": carol.pk, "username": "carol"}
    [expired] = bob_inbox.events()
    assert (expired["type"], expired["reason"]) == ("takeover.expired", "editor_left")


def test_a_superuser_may_force(workspace: Workspace, alice: User) -> None:
    root = User.objects.create_superuser("root", password="pw-root-123")
    _open(alice, workspace)
    waiting = _open(root, workspace)
    assert actions.do_force_takeover(user=root, session_id=waiting.session_id).status == "forced"


def test_nothing_is_announced_when_the_transaction_rolls_back(
    workspace: Workspace,
    alice: User,
    bob: User,
    inbox: Callable[[UUID], Inbox],
    django_capture_on_commit_callbacks: Any,
) -> None:
    editor, waiting = _open(alice, workspace), _open(bob, workspace)
    editor_inbox = inbox(editor.session_id)

    def fail_after_the_action() -> None:
        with transaction.atomic():
            actions.do_request_takeover(user=bob, session_id=waiting.session_id)
            raise RuntimeError("the caller failed after the action")

    with django_capture_on_commit_callbacks(execute=True) as callbacks, pytest.raises(RuntimeError):
        fail_after_the_action()
    assert callbacks == []
    assert editor_inbox.events() == []
    assert not TakeoverRequest.objects.exists()


def test_heartbeats_refresh_only_own_active_sessions(workspace: Workspace, alice: User, bob: User) -> None:
    session = _open(alice, workspace)
    later = timezone.now() + timedelta(seconds=30)
    assert actions.do_heartbeat(user=alice, session_id=session.session_id, now=later).last_seen_at == later
    with pytest.raises(actions.NotFound):
        actions.do_heartbeat(user=bob, session_id=session.session_id)
    actions.do_close_session(user=alice, session_id=session.session_id)
    with pytest.raises(actions.Conflict, match="has ended"):
        actions.do_heartbeat(user=alice, session_id=session.session_id)
