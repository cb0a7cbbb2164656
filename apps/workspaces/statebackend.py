"""The platform as Terraform's ``http`` state backend: per-attempt credentials, lock, read, write.

The agent writes a ``backend "http"`` override into the task's directory (docs/protocol.md) whose
address is ``/api/v1/workspaces/<id>/terraform-state/`` on a web replica, with the credential the
dispatch carried as the basic-auth password. Terraform then GETs the state, LOCKs it for its run,
POSTs each state it persists and UNLOCKs at the end.

Guarantees: a credential names one task, one attempt and one workspace, is signed with the
platform's key and expires (``TERRAFORM_STATE_CREDENTIAL_SLACK`` after the task's timeout, counted
from its dispatch); every request re-checks, with the task row locked, that the attempt is the
task's current one and the task is running, so after a settle, cancel, timeout or re-queue the old
attempt's lock, reads, writes and unlock are refused (409), whatever its credential's expiry. At
most one lock per workspace (the partial unique index ``one_state_lock_per_workspace``; requests
are serialised by the workspace row lock); a lock held by an attempt that is no longer live is
stale and released (settling an attempt releases its lock too). Writes need the attempt's lock, go
through states.py's rules (lineage, serial), and from an attempt no longer live are kept as a
conflict version and refused.
Does NOT: authenticate users (only attempts), or keep a state Terraform never sent (a Terraform
killed before it persisted loses what it had not written).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.utils import timezone

from apps.workspaces import states
from apps.workspaces.models import StateLock, Task, Workspace

logger = logging.getLogger(__name__)

SALT = "iacplatform.terraform-state-backend"
MAX_LOCK_INFO_BYTES = 16 * 1024


class LockHeld(states.Refused):
    """423 or 409 carrying the lock info Terraform expects in the body."""

    def __init__(self, status: int, message: str, info: dict[str, Any]) -> None:
        super().__init__(status, message)
        self.info = info


@dataclass(frozen=True)
class Credential:
    task_id: int
    attempt: int
    workspace_id: int
    expires: float


def backend_path(workspace_id: int) -> str:
    return "/api/v1/workspaces/%d/terraform-state/" % workspace_id


def username(task_id: int) -> str:
    return "task-%d" % task_id


def mint(task: Task) -> dict[str, Any]:
    """The ``state_backend`` block of a dispatch: where Terraform keeps its state, and as whom."""
    expires = time.time() + task.timeout_seconds + settings.TERRAFORM_STATE_CREDENTIAL_SLACK
    token = signing.dumps({"t": task.pk, "a": task.attempt, "w": task.workspace_id, "e": int(expires)}, salt=SALT)
    address = settings.TERRAFORM_STATE_BACKEND_URL.rstrip("/") + backend_path(task.workspace_id)
    return {
        "address": address,
        "username": username(task.pk),
        "password": token,
        "expires_at": int(expires),
    }


def authenticate(authorization: str | None, *, workspace_id: int, now: float | None = None) -> Credential:
    """The credential of a request (basic auth), else Refused: 401 missing or forged, 403 expired
    or for another workspace."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise states.Refused(401, "this endpoint needs the task attempt's credential (basic auth)")
    try:
        user, _, token = base64.b64decode(encoded.strip(), validate=True).decode("ascii").partition(":")
        claims = signing.loads(token, salt=SALT)
        credential = Credential(
            task_id=int(claims["t"]), attempt=int(claims["a"]), workspace_id=int(claims["w"]), expires=claims["e"]
        )
    except (binascii.Error, UnicodeDecodeError, signing.BadSignature, KeyError, TypeError, ValueError) as exc:
        raise states.Refused(401, "the credential is not valid") from exc
    if not hmac.compare_digest(user, username(credential.task_id)):
        raise states.Refused(401, "the credential is not valid")
    if (now if now is not None else time.time()) >= credential.expires:
        raise states.Refused(
            403, "the credential of task %d attempt %d has expired" % (credential.task_id, credential.attempt)
        )
    if credential.workspace_id != workspace_id:
        raise states.Refused(403, "the credential is for another workspace")
    return credential


def _live_task(credential: Credential) -> tuple[Task | None, bool]:
    # The task row first, then the workspace (the order record_result takes them in).
    task = Task.objects.select_for_update().filter(pk=credential.task_id).first()
    live = task is not None and task.attempt == credential.attempt and task.status == Task.Status.RUNNING
    return task, live


def _not_live(credential: Credential, task: Task | None) -> str:
    if task is None:
        return "task %d no longer exists" % credential.task_id
    if task.attempt != credential.attempt:
        return "attempt %d of task %d was superseded by attempt %d" % (credential.attempt, task.pk, task.attempt)
    return "task %d is %s: attempt %d may no longer touch the state" % (task.pk, task.status, credential.attempt)


def _lock_workspace(workspace_id: int) -> None:
    Workspace.objects.select_for_update(no_key=True).filter(pk=workspace_id).values_list("pk").first()


def _held_lock(workspace_id: int) -> StateLock | None:
    return StateLock.objects.held().filter(workspace_id=workspace_id).select_related("task").first()


def _holder_live(lock: StateLock) -> bool:
    task = lock.task
    return task is not None and task.attempt == lock.attempt and task.status == Task.Status.RUNNING


def _lock_body(lock: StateLock | None, detail: str) -> dict[str, Any]:
    body = dict(lock.info) if lock is not None else {"ID": ""}
    body["detail"] = detail
    return body


def read(credential: Credential) -> dict[str, Any] | None:
    """The current state (None: there is none yet)."""
    with transaction.atomic():
        task, live = _live_task(credential)
        if not live:
            raise states.Refused(409, _not_live(credential, task))
        workspace = Workspace.objects.select_related("current_state").get(pk=credential.workspace_id)
        return workspace.current_state.state if workspace.current_state else None


def parse_lock_info(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_LOCK_INFO_BYTES:
        raise states.Refused(413, "the lock info is larger than %d bytes" % MAX_LOCK_INFO_BYTES)
    try:
        info = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise states.Refused(400, "the lock info is not JSON") from exc
    if not isinstance(info, dict) or not isinstance(info.get("ID"), str) or not 0 < len(info["ID"]) <= 100:
        raise states.Refused(400, "the lock info needs an ID of 1 to 100 characters")
    if _has_nul(info):
        raise states.Refused(400, "the lock info must not contain NUL characters")
    return info


def lock(credential: Credential, info: dict[str, Any]) -> StateLock:
    with transaction.atomic():
        task, live = _live_task(credential)
        _lock_workspace(credential.workspace_id)
        held = _held_lock(credential.workspace_id)
        if not live:
            raise LockHeld(409, _not_live(credential, task), _lock_body(held, _not_live(credential, task)))
        assert task is not None
        if held is not None:
            if held.task_id == task.pk and held.attempt == credential.attempt and held.lock_id == info["ID"]:
                return held  # a retried LOCK of the lock we already granted
            if _holder_live(held):
                detail = "the state is locked by task %s attempt %d since %s" % (
                    held.task_id,
                    held.attempt,
                    held.acquired_at.isoformat(),
                )
                raise LockHeld(423, detail, _lock_body(held, detail))
            _release(held, reason="stale: task %s attempt %d no longer live" % (held.task_id, held.attempt))
        granted = StateLock.objects.create(
            workspace_id=credential.workspace_id, lock_id=info["ID"], task=task, attempt=credential.attempt, info=info
        )
        logger.info(
            "workspace %d: state locked by task %d attempt %d", credential.workspace_id, task.pk, credential.attempt
        )
    return granted


def unlock(credential: Credential, info: dict[str, Any]) -> None:
    with transaction.atomic():
        task, live = _live_task(credential)
        _lock_workspace(credential.workspace_id)
        held = _held_lock(credential.workspace_id)
        if not live:
            raise LockHeld(409, _not_live(credential, task), _lock_body(held, _not_live(credential, task)))
        if held is None:
            return  # nothing held: unlocking twice is harmless
        if held.lock_id != info["ID"] or held.task_id != credential.task_id or held.attempt != credential.attempt:
            raise LockHeld(423, "the state is locked by another lock", _lock_body(held, "locked by another lock"))
        _release(held, reason="unlocked")


def _release(held: StateLock, *, reason: str) -> None:
    held.released_at, held.release_reason = timezone.now(), reason[:100]
    held.save(update_fields=["released_at", "release_reason"])


def parse_state(body: bytes, *, content_md5: str | None) -> dict[str, Any]:
    if len(body) > settings.TERRAFORM_STATE_MAX_BYTES:
        raise states.Refused(413, "the state is larger than %d bytes" % settings.TERRAFORM_STATE_MAX_BYTES)
    if content_md5 is not None:
        digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        if not hmac.compare_digest(digest, content_md5.strip()):
            raise states.Refused(400, "the body does not match its Content-MD5")
    try:
        state = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise states.Refused(400, "the state is not JSON") from exc
    if _has_nul(state):
        raise states.Refused(400, "the state must not contain NUL characters")  # PostgreSQL's jsonb refuses them
    return states.check_state(state)


def _has_nul(value: Any) -> bool:
    return "\\u0000" in json.dumps(value)


def write(credential: Credential, state: dict[str, Any], *, lock_id: str | None) -> states.Offer:
    with transaction.atomic():
        task, live = _live_task(credential)
        if task is None or task.type != Task.Type.APPLY:
            raise states.Refused(409, "only an apply writes state" if task else _not_live(credential, task))
        if live:
            _lock_workspace(credential.workspace_id)
            held = _held_lock(credential.workspace_id)
            if held is None or held.task_id != task.pk or held.attempt != credential.attempt:
                raise states.Refused(423 if held else 409, "lock the state before writing it")
            if lock_id is not None and lock_id != held.lock_id:
                raise states.Refused(423, "the state is locked by another lock")
            return states.offer_state(task=task, attempt=credential.attempt, state=state, live=True)
        # What a resumed Terraform persisted describes real infrastructure: keep it, as a conflict
        # (committed with this block), and tell Terraform its write did not take.
        kept = states.offer_state(task=task, attempt=credential.attempt, state=state, live=False)
        detail = _not_live(credential, task)
        if kept.verdict is states.Verdict.CONFLICT and kept.version is not None:
            detail += "; the state was kept as conflict version %d" % kept.version.serial
    raise states.Refused(409, detail)
