"""State changes of editing sessions and takeover requests (Zulip-style ``do_*`` actions).

Each action is one transaction; the events it causes are sent to the other side's
``session.<session_id>`` group from ``transaction.on_commit`` (apps/hub/events.py), so they reach
the socket on whichever replica it is, and never announce a change that rolled back.

Cross-replica safety: every change locks the rows it reads (``SELECT ... FOR UPDATE``, sessions
before requests, sessions in primary-key order) and re-checks their state under the lock, so two
replicas racing on the same request or resource serialise and the loser gets a :class:`Conflict`.
The edit lock itself is the partial unique index ``one_editor_per_resource``: two openers that both
see a free resource cannot both become editor. The expiry actions (run by the
``lock_draft_cleanup`` job) use ``SKIP LOCKED``: a row a user is changing right now is left for
the next tick.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.access import policy
from apps.hub import permissions
from apps.hub.events import notify_on_commit
from apps.hub.models import EditingSession, TakeoverRequest
from apps.workspaces.models import Workspace


class HubError(Exception):
    """A request the hub refuses; ``status`` is the HTTP status the API answers with."""

    status = 400
    code = "invalid"


class NotFound(HubError):
    status = 404
    code = "not_found"


class NotAllowed(HubError):
    status = 403
    code = "forbidden"


class Conflict(HubError):
    status = 409
    code = "conflict"


def require_edit(user: Any, workspace_id: int, *, missing: str) -> None:
    """Editing needs ``write`` (apps/hub/permissions.py); an invisible workspace reads as ``missing``."""
    verdict = policy.check(user, workspace_id, permissions.EDIT)
    if verdict is policy.Verdict.INVISIBLE:
        raise NotFound(missing)
    if verdict is policy.Verdict.FORBIDDEN:
        raise NotAllowed("editing needs the write role on this workspace")


def _user_summary(user: Any) -> dict[str, Any]:
    return {"id": user.pk, "username": user.get_username()}


def _request_event(kind: str, request: TakeoverRequest, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "request_id": request.pk,
        "status": request.status,
        "workspace_id": request.session.workspace_id,
        "resource_address": request.session.resource_address,
    }
    event.update(extra)
    return event


def request_expires_at(request: TakeoverRequest) -> datetime:
    return request.created_at + timedelta(seconds=settings.HUB_TAKEOVER_REQUEST_TIMEOUT)


# --- sessions -------------------------------------------------------------------------------------


def do_open_session(*, user: Any, workspace: Workspace, resource_address: str) -> EditingSession:
    """Open ``resource_address``: as its editor when nobody edits it, else as a waiting session."""
    require_edit(user, workspace.pk, missing="no such workspace")
    with transaction.atomic():
        try:
            # A savepoint: losing the race for the edit lock must not abort the outer transaction.
            with transaction.atomic():
                return EditingSession.objects.create(
                    workspace=workspace, resource_address=resource_address, user=user, mode=EditingSession.Mode.EDITOR
                )
        except IntegrityError as exc:
            if "one_editor_per_resource" not in str(exc):
                raise
        return EditingSession.objects.create(
            workspace=workspace, resource_address=resource_address, user=user, mode=EditingSession.Mode.WAITING
        )


def _owned_session_for_update(*, user: Any, session_id: UUID, edit: bool = True) -> EditingSession:
    session = EditingSession.objects.select_for_update().filter(session_id=session_id).first()
    # Someone else's session is reported as missing: session ids are not to be probed.
    if session is None or session.user_id != user.pk:
        raise NotFound("no such editing session")
    if edit:
        require_edit(user, session.workspace_id, missing="no such editing session")
    return session


def get_owned_session(*, user: Any, session_id: UUID) -> EditingSession:
    """The caller's own session, while they may still edit its workspace."""
    session = EditingSession.objects.filter(session_id=session_id, user_id=user.pk).first()
    if session is None:
        raise NotFound("no such editing session")
    require_edit(user, session.workspace_id, missing="no such editing session")
    return session


def do_heartbeat(*, user: Any, session_id: UUID, now: datetime | None = None) -> EditingSession:
    """Record that the session is alive. An ended session stays ended (Conflict)."""
    now = now or timezone.now()
    session = get_owned_session(user=user, session_id=session_id)
    # Compare-and-set: a heartbeat racing with the cleanup job's expiry either lands first (and the
    # job, re-checking last_seen_at under its lock, spares the session) or finds it inactive.
    updated = EditingSession.objects.filter(pk=session.pk, active=True).update(last_seen_at=now)
    session.refresh_from_db()
    if updated != 1:
        raise Conflict("the editing session has ended (%s)" % (session.ended_reason or "unknown"))
    return session


def _end_session(session: EditingSession, *, reason: str, now: datetime, by: Any = None) -> None:
    """End a session locked by the caller and settle every pending request that involved it."""
    session.active = False
    session.ended_at = now
    session.ended_reason = reason
    session.save(update_fields=["active", "ended_at", "ended_reason"])
    ended: dict[str, Any] = {"type": "session.ended", "session_id": str(session.session_id), "reason": reason}
    if by is not None:
        ended["by"] = _user_summary(by)
    notify_on_commit(session.session_id, ended)

    pending = TakeoverRequest.Status.PENDING
    # Requests addressed to this session: its editor is gone, so they can no longer be answered.
    for request in TakeoverRequest.objects.select_for_update().filter(session=session, status=pending):
        request.session = session
        request.status = TakeoverRequest.Status.EXPIRED
        request.responded_at = now
        request.save(update_fields=["status", "responded_at"])
        if request.requester_session_id is not None:
            notify_on_commit(
                request.requester_session_id, _request_event("takeover.expired", request, reason="editor_left")
            )
    # Requests this session made: nobody is waiting for the answer any more.
    for request in (
        TakeoverRequest.objects.select_for_update()
        .select_related("session")
        .filter(requester_session_id=session.session_id, status=pending)
    ):
        request.status = TakeoverRequest.Status.EXPIRED
        request.responded_at = now
        request.save(update_fields=["status", "responded_at"])
        notify_on_commit(
            request.session.session_id, _request_event("takeover.expired", request, reason="requester_left")
        )


def do_close_session(*, user: Any, session_id: UUID, now: datetime | None = None) -> EditingSession:
    """Close the caller's session (idempotent: closing an ended session changes nothing)."""
    now = now or timezone.now()
    with transaction.atomic():
        session = _owned_session_for_update(user=user, session_id=session_id, edit=False)
        if session.active:
            _end_session(session, reason=EditingSession.EndReason.CLOSED, now=now)
    return session


def do_claim_session(*, user: Any, session_id: UUID, now: datetime | None = None) -> EditingSession:
    """Make a waiting session the editor of its resource, if nobody edits it now."""
    now = now or timezone.now()
    with transaction.atomic():
        session = _owned_session_for_update(user=user, session_id=session_id)
        if not session.active:
            raise Conflict("the editing session has ended (%s)" % session.ended_reason)
        if session.mode == EditingSession.Mode.EDITOR:
            return session
        try:
            with transaction.atomic():
                session.mode = EditingSession.Mode.EDITOR
                session.last_seen_at = now
                session.save(update_fields=["mode", "last_seen_at"])
        except IntegrityError as exc:
            if "one_editor_per_resource" not in str(exc):
                raise
            session.mode = EditingSession.Mode.WAITING
            raise Conflict("someone else edits this resource; request a takeover instead") from None
    return session


def current_editor(session: EditingSession) -> EditingSession | None:
    return (
        EditingSession.objects.select_related("user")
        .filter(
            workspace_id=session.workspace_id,
            resource_address=session.resource_address,
            active=True,
            mode=EditingSession.Mode.EDITOR,
        )
        .first()
    )


# --- takeover -------------------------------------------------------------------------------------


def _lock_sessions(*session_pks: int) -> dict[int, EditingSession]:
    # One lock order (primary key) for every action, so two actions never deadlock on two sessions.
    locked = EditingSession.objects.select_for_update().filter(pk__in=session_pks).order_by("pk")
    return {s.pk: s for s in locked}


class _EditorChanged(Exception):
    pass


EDITOR_LOOKUPS = 3


def _waiting_session_and_editor(*, user: Any, session_id: UUID) -> tuple[EditingSession, EditingSession]:
    """Lock the caller's waiting session and the editor of its resource, in primary-key order.

    The editor is found without a lock, so a takeover committed while we waited for its lock may
    have replaced it: then the attempt's savepoint is rolled back (releasing its row locks, so the
    primary-key order still holds) and the new editor is looked up.
    """
    mine = get_owned_session(user=user, session_id=session_id)
    for _ in range(EDITOR_LOOKUPS):
        editor = current_editor(mine)
        if editor is None:
            raise Conflict("nobody edits this resource; claim the session instead")
        try:
            with transaction.atomic():
                locked = _lock_sessions(mine.pk, editor.pk)
                locked_mine, locked_editor = locked[mine.pk], locked[editor.pk]
                if locked_editor.active and locked_editor.mode == EditingSession.Mode.EDITOR:
                    break
                raise _EditorChanged
        except _EditorChanged:
            continue
    else:
        raise Conflict("the editor of this resource keeps changing; try again")
    # Re-checked under the lock: ours may have ended or been promoted meanwhile.
    if not locked_mine.active:
        raise Conflict("the editing session has ended (%s)" % locked_mine.ended_reason)
    if locked_mine.mode == EditingSession.Mode.EDITOR:
        raise Conflict("this session already edits the resource")
    return locked_mine, locked_editor


def do_request_takeover(*, user: Any, session_id: UUID, message: str = "") -> tuple[TakeoverRequest, bool]:
    """Ask the editor of the resource of the caller's waiting session to hand it over.

    Returns the request and whether it was created (a second ask while one is pending returns the
    pending one unchanged).
    """
    with transaction.atomic():
        mine, editor = _waiting_session_and_editor(user=user, session_id=session_id)
        existing = (
            TakeoverRequest.objects.select_related("session", "requester")
            .filter(session=editor, requester_session_id=mine.session_id, status=TakeoverRequest.Status.PENDING)
            .first()
        )
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                request = TakeoverRequest.objects.create(
                    session=editor, requester=user, requester_session_id=mine.session_id, message=message
                )
        except IntegrityError as exc:
            if "one_pending_takeover_per_requester" not in str(exc):
                raise
            raise Conflict("you already have a pending request for this resource from another session") from None
        notify_on_commit(
            editor.session_id,
            _request_event(
                "takeover.requested",
                request,
                session_id=str(editor.session_id),
                requester=_user_summary(user),
                message=message,
                expires_at=request_expires_at(request).isoformat(),
            ),
        )
    return request, True


def get_takeover_request(*, user: Any, request_id: int) -> TakeoverRequest:
    """A request as its requester or its editor (while they may edit the workspace) or a platform
    admin sees it; anyone else gets NotFound."""
    request = TakeoverRequest.objects.select_related("session", "requester").filter(pk=request_id).first()
    if request is None:
        raise NotFound("no such takeover request")
    if policy.is_platform_admin(user):
        return request
    if not (request.requester_id == user.pk or request.session.user_id == user.pk):
        raise NotFound("no such takeover request")
    require_edit(user, request.session.workspace_id, missing="no such takeover request")
    return request


def do_respond_takeover(*, user: Any, request_id: int, approve: bool, now: datetime | None = None) -> TakeoverRequest:
    """The editor approves (its session ends, the requester's becomes editor) or rejects."""
    now = now or timezone.now()
    request = get_takeover_request(user=user, request_id=request_id)
    if request.session.user_id != user.pk:
        raise NotAllowed("only the editor of the resource may answer this request")
    with transaction.atomic():
        requester_session = (
            EditingSession.objects.filter(session_id=request.requester_session_id).first()
            if request.requester_session_id is not None
            else None
        )
        pks = [request.session_id] + ([requester_session.pk] if requester_session else [])
        locked = _lock_sessions(*pks)
        editor = locked[request.session_id]
        request = TakeoverRequest.objects.select_for_update().select_related("requester").get(pk=request_id)
        request.session = editor
        if request.status != TakeoverRequest.Status.PENDING:
            raise Conflict("the request is already %s" % request.status)
        request.responded_at = now
        if not approve:
            request.status = TakeoverRequest.Status.REJECTED
            request.save(update_fields=["status", "responded_at"])
            if request.requester_session_id is not None:
                notify_on_commit(
                    request.requester_session_id,
                    _request_event("takeover.rejected", request, by=_user_summary(user)),
                )
            return request
        taker = locked.get(requester_session.pk) if requester_session else None
        if taker is None or not taker.active:
            raise Conflict("the requesting session has ended")
        request.status = TakeoverRequest.Status.APPROVED
        request.save(update_fields=["status", "responded_at"])
        _hand_over(editor=editor, taker=taker, reason=EditingSession.EndReason.TAKEN_OVER, now=now, by=user)
        notify_on_commit(
            taker.session_id,
            _request_event("takeover.approved", request, session_id=str(taker.session_id), mode=taker.mode),
        )
    return request


def _hand_over(*, editor: EditingSession, taker: EditingSession, reason: str, now: datetime, by: Any) -> None:
    # The old editor ends before the taker is promoted: the unique index checks each statement.
    _end_session(editor, reason=reason, now=now, by=by)
    taker.mode = EditingSession.Mode.EDITOR
    taker.last_seen_at = now
    taker.save(update_fields=["mode", "last_seen_at"])


def do_force_takeover(
    *, user: Any, session_id: UUID, message: str = "", now: datetime | None = None
) -> TakeoverRequest:
    """Take the resource from its editor without asking (apps/hub/permissions.py: ``admin`` on the
    workspace, or ``write`` and ``hub.force_takeover``)."""
    now = now or timezone.now()
    workspace_id = get_owned_session(user=user, session_id=session_id).workspace_id
    if not permissions.can_force_takeover(user, workspace_id):
        raise NotAllowed(
            "forcing a takeover needs the admin role on the workspace or the hub.force_takeover permission"
        )
    with transaction.atomic():
        mine, editor = _waiting_session_and_editor(user=user, session_id=session_id)
        request = TakeoverRequest.objects.create(
            session=editor,
            requester=user,
            requester_session_id=mine.session_id,
            message=message,
            status=TakeoverRequest.Status.FORCED,
            responded_at=now,
        )
        _hand_over(editor=editor, taker=mine, reason=EditingSession.EndReason.FORCED, now=now, by=user)
    return request


# --- expiry (the lock_draft_cleanup job) ----------------------------------------------------------


def require_transaction() -> None:
    if not connection.in_atomic_block:
        raise RuntimeError("expiry actions run inside the job's fenced transaction")


def do_expire_stale_sessions(*, now: datetime, max_age: float, limit: int = 500) -> int:
    """End active sessions not seen for ``max_age`` seconds; tell them and their counterparts."""
    require_transaction()
    cutoff = now - timedelta(seconds=max_age)
    stale = (
        EditingSession.objects.select_for_update(skip_locked=True)
        .filter(active=True, last_seen_at__lt=cutoff)
        .order_by("pk")[:limit]
    )
    count = 0
    for session in stale:
        _end_session(session, reason=EditingSession.EndReason.EXPIRED, now=now)
        count += 1
    return count


def do_expire_takeover_requests(*, now: datetime, max_age: float, limit: int = 500) -> int:
    """Expire pending requests nobody answered within ``max_age`` seconds; tell both sides."""
    require_transaction()
    cutoff = now - timedelta(seconds=max_age)
    unanswered = (
        TakeoverRequest.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("session")
        .filter(status=TakeoverRequest.Status.PENDING, created_at__lt=cutoff)
        .order_by("pk")[:limit]
    )
    count = 0
    for request in unanswered:
        request.status = TakeoverRequest.Status.EXPIRED
        request.responded_at = now
        request.save(update_fields=["status", "responded_at"])
        event = _request_event("takeover.expired", request, reason="unanswered")
        notify_on_commit(request.session.session_id, event)
        if request.requester_session_id is not None:
            notify_on_commit(request.requester_session_id, event)
        count += 1
    return count
