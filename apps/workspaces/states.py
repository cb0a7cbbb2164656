"""A workspace's current Terraform state: a pointer that never goes backwards by itself.

Guarantees: the pointer (``Workspace.current_state``) moves only under Terraform's own rule
(same lineage, a higher Terraform serial) for a write of the task's live attempt, or by an
operator's promote; every move is a ``StateTransition`` row (kind, task and attempt or user, from,
to) written in the same transaction, under the workspace's row lock (FOR NO KEY UPDATE, so
concurrent writes of one workspace are ordered and each compares against the pointer the previous
one left). A state from an attempt that is no longer live (the task was settled, cancelled, timed
out or re-queued meanwhile) is kept, since it describes real infrastructure, as a ``conflict``
version with its task and attempt, and never becomes current by itself; while a workspace has an
unresolved conflict its applies are held (plans and drift checks still run).
Versions past their retention are deleted by state_version_retention (retention.py), never the
current one, a conflict or the newest: what these rules compare against is always kept.
Does NOT: decide whether an attempt is live (the caller does, from the task row it locked), or
authenticate anyone (views and the state backend do).
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.workspaces import retention
from apps.workspaces.actions import kick_after_commit
from apps.workspaces.models import StateTransition, StateVersion, Task, Workspace

logger = logging.getLogger(__name__)

MAX_LINEAGE = 64


class Refused(Exception):
    """A state (or an action on one) refused; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Resolver(Protocol):
    def __call__(self, *, workspace_id: int, version_id: int, actor: Any) -> StateVersion: ...


class Verdict(enum.Enum):
    CURRENT = "current"  # stored and now the workspace's current state
    UNCHANGED = "unchanged"  # identical to the current state (a repeated write): nothing stored
    CONFLICT = "conflict"  # kept as a conflict version, not current


@dataclass(frozen=True)
class Offer:
    verdict: Verdict
    version: StateVersion | None


def check_state(state: Any, *, lineage_required: bool = True) -> dict[str, Any]:
    """The state as Terraform writes it (format 4: version, serial, lineage), else Refused(400).

    Terraform assigns a new state's lineage when it first persists it, so the errored.tfstate of a
    first apply that could not persist has none: ``lineage_required=False`` lets such a state be
    kept (as a conflict; it can never be current by itself)."""
    if not isinstance(state, dict):
        raise Refused(400, "a Terraform state is a JSON object")
    version, serial, lineage = state.get("version"), state.get("serial"), state.get("lineage")
    if type(version) is not int or version != 4:
        raise Refused(400, "only Terraform state format version 4 is accepted")
    if type(serial) is not int or not 0 <= serial < 2**63:
        raise Refused(400, "the state's serial must be a non-negative integer")
    shortest = 1 if lineage_required else 0
    if not isinstance(lineage, str) or not shortest <= len(lineage) <= MAX_LINEAGE or "\x00" in lineage:
        raise Refused(400, "the state's lineage must be a string of 1 to %d characters" % MAX_LINEAGE)
    return state


def has_conflict(workspace_id: int) -> bool:
    return StateVersion.objects.filter(workspace_id=workspace_id, status=StateVersion.Status.CONFLICT).exists()


def _lock_workspace(workspace_id: int) -> Workspace:
    # FOR NO KEY UPDATE: new tasks (which reference the workspace) may still be inserted meanwhile.
    return (
        Workspace.objects.select_for_update(no_key=True, of=("self",))
        .select_related("current_state")
        .get(pk=workspace_id)
    )


def _new_version(workspace: Workspace, state: dict[str, Any], **fields: Any) -> StateVersion:
    last = StateVersion.objects.filter(workspace_id=workspace.pk).aggregate(m=Max("serial"))["m"] or 0
    version = StateVersion.objects.create(
        workspace_id=workspace.pk,
        serial=last + 1,
        lineage=state["lineage"],
        terraform_serial=state["serial"],
        state=state,
        **fields,
    )
    retention.schedule_state_prune(workspace.pk)  # a row may have left the newest STATE_VERSIONS_KEEP
    return version


def _move(
    workspace: Workspace, to: StateVersion, *, kind: str, task: Task | None, attempt: int | None, actor: Any
) -> None:
    before = workspace.current_state
    StateTransition.objects.create(
        workspace_id=workspace.pk,
        kind=kind,
        from_version=before,
        to_version=to,
        from_serial=before.terraform_serial if before else None,
        from_lineage=before.lineage if before else "",
        to_serial=to.terraform_serial,
        to_lineage=to.lineage,
        task=task,
        attempt=attempt,
        actor=actor,
    )
    workspace.current_state = to
    workspace.save(update_fields=["current_state", "updated_at"])


def offer_state(*, task: Task, attempt: int, state: dict[str, Any], live: bool) -> Offer:
    """Store a state a task's attempt produced. ``live``: that attempt is the task's current one and
    the task is still running (checked by the caller on the row it locked, in this transaction).

    A live write becomes current when the workspace has none, or has the same lineage with a lower
    serial; the same serial and content again is a no-op. Anything else from a live attempt is
    Refused(409) and stores nothing (Terraform's own rule). A write from an attempt that is not live
    is kept as a conflict version (once per content), unless it equals the current state; so is a
    state without a lineage (one Terraform never persisted).
    """
    check_state(state, lineage_required=False)
    with transaction.atomic():
        workspace = _lock_workspace(task.workspace_id)
        current = workspace.current_state
        if not live or not state["lineage"]:
            if current is not None and current.state == state:
                return Offer(Verdict.UNCHANGED, current)
            kept = StateVersion.objects.filter(
                workspace_id=workspace.pk, task=task, attempt=attempt, terraform_serial=state["serial"]
            ).exclude(status=StateVersion.Status.ACCEPTED)
            for version in kept:
                if version.state == state:
                    return Offer(Verdict.CONFLICT, version)
            version = _new_version(workspace, state, status=StateVersion.Status.CONFLICT, task=task, attempt=attempt)
            logger.warning(
                "workspace %d: state serial %d of task %d attempt %d (no longer live) kept as conflict version %d",
                workspace.pk,
                state["serial"],
                task.pk,
                attempt,
                version.serial,
            )
            return Offer(Verdict.CONFLICT, version)
        if current is not None:
            if state["lineage"] != current.lineage:
                raise Refused(
                    409, "the state's lineage %s is not the workspace's (%s)" % (state["lineage"], current.lineage)
                )
            if state["serial"] < current.terraform_serial or (
                state["serial"] == current.terraform_serial and state != current.state
            ):
                raise Refused(
                    409,
                    "the state's serial %d is not above the workspace's current serial %d"
                    % (state["serial"], current.terraform_serial),
                )
            if state["serial"] == current.terraform_serial:
                return Offer(Verdict.UNCHANGED, current)
        version = _new_version(workspace, state, task=task, attempt=attempt)
        _move(workspace, version, kind=StateTransition.Kind.TERRAFORM, task=task, attempt=attempt, actor=None)
    return Offer(Verdict.CURRENT, version)


def do_promote(*, workspace_id: int, version_id: int, actor: Any) -> StateVersion:
    """An operator makes a conflict (or an earlier accepted) version the current state.

    The promoted content is stored as a new accepted version whose Terraform serial is above both
    the current one and its own, so the serial of the current state keeps rising and the next
    Terraform run (which starts from it) writes above it.
    """
    with transaction.atomic():
        workspace = _lock_workspace(workspace_id)
        source = StateVersion.objects.select_for_update().filter(pk=version_id, workspace_id=workspace_id).first()
        if source is None:
            raise Refused(404, "no such state version in this workspace")
        if source.status == StateVersion.Status.DISCARDED:
            raise Refused(409, "state version %d was discarded" % source.serial)
        current = workspace.current_state
        if current is not None and current.pk == source.pk:
            raise Refused(409, "state version %d is already current" % source.serial)
        serial = max(source.terraform_serial, current.terraform_serial if current else 0) + 1
        # A state Terraform never persisted has no lineage yet: it gets one, as Terraform would.
        state = {**source.state, "serial": serial, "lineage": source.lineage or str(uuid.uuid4())}
        version = _new_version(workspace, state, task=source.task, attempt=source.attempt)
        _move(workspace, version, kind=StateTransition.Kind.PROMOTE, task=None, attempt=None, actor=actor)
        if source.status == StateVersion.Status.CONFLICT:
            _resolve(source, StateVersion.Status.ACCEPTED, actor)
        logger.warning("workspace %d: state version %d promoted by %s", workspace_id, source.serial, actor)
        kick_after_commit(workspace_id)  # applies held by the conflict may run now
    return version


def do_discard(*, workspace_id: int, version_id: int, actor: Any) -> StateVersion:
    """An operator discards a conflict version: it stays stored, but no longer holds applies."""
    with transaction.atomic():
        _lock_workspace(workspace_id)
        version = StateVersion.objects.select_for_update().filter(pk=version_id, workspace_id=workspace_id).first()
        if version is None:
            raise Refused(404, "no such state version in this workspace")
        if version.status != StateVersion.Status.CONFLICT:
            raise Refused(409, "state version %d is not a conflict (%s)" % (version.serial, version.status))
        _resolve(version, StateVersion.Status.DISCARDED, actor)
        logger.warning("workspace %d: conflict state version %d discarded by %s", workspace_id, version.serial, actor)
        kick_after_commit(workspace_id)
    return version


def _resolve(version: StateVersion, status: str, actor: Any) -> None:
    version.status, version.resolved_by, version.resolved_at = status, actor, timezone.now()
    version.save(update_fields=["status", "resolved_by", "resolved_at"])
    retention.schedule_state_prune(version.workspace_id, released_at=version.created_at)  # no longer held
