"""Races between replicas, forced: the first action holds its transaction open until the second
is seen waiting on its lock in pg_stat_activity, then commits. Each replica is a thread with its
own database connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections, transaction

from apps.hub import actions
from apps.hub.models import EditingSession, TakeoverRequest
from apps.workspaces.models import Workspace

pytestmark = pytest.mark.django_db(transaction=True)

ADDR = "aws_iam_role.deploy"


class Outcome:
    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None


def _in_thread(
    func: Callable[[], Any],
    outcome: Outcome,
    *,
    hold: threading.Event | None = None,
    held: threading.Event | None = None,
) -> threading.Thread:
    def run() -> None:
        try:
            with transaction.atomic():
                outcome.value = func()
                if held is not None and hold is not None:
                    held.set()
                    assert hold.wait(30), "never released"
        except BaseException as exc:
            outcome.error = exc
            if held is not None:
                held.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_until_someone_waits_on_a_lock() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            (waiting,) = cursor.fetchone()
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the second replica never waited on the first one's lock")


def _race(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Outcome, Outcome]:
    one, two = Outcome(), Outcome()
    hold, held = threading.Event(), threading.Event()
    t1 = _in_thread(first, one, hold=hold, held=held)
    assert held.wait(30)
    assert one.error is None, one.error
    t2 = _in_thread(second, two)
    _wait_until_someone_waits_on_a_lock()
    hold.set()
    t1.join(30)
    t2.join(30)
    return one, two


def test_two_openers_of_a_free_resource_get_one_editor(workspace: Workspace, alice: User, bob: User) -> None:
    one, two = _race(
        lambda: actions.do_open_session(user=alice, workspace=workspace, resource_address=ADDR),
        lambda: actions.do_open_session(user=bob, workspace=workspace, resource_address=ADDR),
    )
    assert one.error is None and two.error is None, (one.error, two.error)
    assert (one.value.mode, two.value.mode) == ("editor", "waiting")
    assert EditingSession.objects.filter(active=True, mode="editor").count() == 1


def _alice_edits_bob_asks(
    workspace: Workspace, alice: User, bob: User, carol: User
) -> tuple[EditingSession, TakeoverRequest, EditingSession]:
    """Alice edits ADDR, Bob and Carol wait on it, Bob has asked to take over.
    Returns Bob's session, his request, and Carol's session."""
    actions.do_open_session(user=alice, workspace=workspace, resource_address=ADDR)
    bob_session = actions.do_open_session(user=bob, workspace=workspace, resource_address=ADDR)
    carol_session = actions.do_open_session(user=carol, workspace=workspace, resource_address=ADDR)
    bob_request, _ = actions.do_request_takeover(user=bob, session_id=bob_session.session_id)
    return bob_session, bob_request, carol_session


def test_an_editor_approving_two_requests_at_once_hands_over_once(
    workspace: Workspace, alice: User, bob: User, carol: User
) -> None:
    _, bob_request, carol_session = _alice_edits_bob_asks(workspace, alice, bob, carol)
    carol_request, _ = actions.do_request_takeover(user=carol, session_id=carol_session.session_id)

    one, two = _race(
        lambda: actions.do_respond_takeover(user=alice, request_id=bob_request.pk, approve=True),
        lambda: actions.do_respond_takeover(user=alice, request_id=carol_request.pk, approve=True),
    )

    assert one.error is None and one.value.status == "approved"
    assert isinstance(two.error, actions.Conflict), two.error  # the loser: its request expired with the editor
    editors = EditingSession.objects.filter(active=True, mode="editor")
    assert [s.user_id for s in editors] == [bob.pk]
    assert TakeoverRequest.objects.get(pk=carol_request.pk).status == "expired"


def test_a_force_racing_an_approval_leaves_one_editor(
    workspace: Workspace, alice: User, bob: User, carol: User
) -> None:
    bob_session, bob_request, carol_session = _alice_edits_bob_asks(workspace, alice, bob, carol)

    one, two = _race(
        lambda: actions.do_respond_takeover(user=alice, request_id=bob_request.pk, approve=True),
        lambda: actions.do_force_takeover(user=carol, session_id=carol_session.session_id),
    )

    assert one.error is None, one.error
    # The force waited for the approval, then found bob as the editor and took it from him.
    assert two.error is None and two.value.status == "forced", two.error
    editors = EditingSession.objects.filter(active=True, mode="editor")
    assert [s.user_id for s in editors] == [carol.pk]
    assert EditingSession.objects.get(pk=bob_session.pk).ended_reason == "forced"
