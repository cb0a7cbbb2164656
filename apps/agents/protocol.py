"""The agent command-and-control protocol: frame parsing and validation (docs/protocol.md).

Guarantees: :func:`parse_frame` either returns a frame whose every field has the documented type,
range and length, or raises :class:`ProtocolError` carrying a documented error code; it never
raises anything else for any input (bad UTF-8, bad JSON, NaN, deep nesting, huge numbers).
:func:`agent_group` maps any agent id to a valid Channels group name.
Does NOT: check ownership (whether a task belongs to the agent), which needs the database and is
done by the actions; or enforce the frame size limit, which the consumer does before parsing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iacplatform import inputs

# 3: the dispatch carries state_backend instead of the state (Terraform reads and writes it through
# the platform's http backend); an agent of an earlier version would start Terraform from no state.
PROTOCOL_VERSION = 3

# Close codes (RFC 6455 and the 4000-4999 private range). A frame above daphne's
# --websocket-max-message-size is closed with RFC 6455's 1009 by daphne itself, before the consumer
# sees it; ASGI servers refuse 1009 from an application, so a frame above AGENT_MAX_FRAME_BYTES
# but within daphne's limit is closed by the consumer with 4009.
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_FRAME_TOO_BIG = 4009
CLOSE_UNAUTHORIZED = 4401
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_PROTOCOL = 4400
CLOSE_CONFLICT = 4409


class Code:
    """Error codes carried by ``error`` frames."""

    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    HELLO_REQUIRED = "hello_required"
    ALREADY_HELLO = "already_hello"
    AGENT_CONFLICT = "agent_conflict"
    CREDENTIAL_REQUIRED = "credential_required"
    CREDENTIAL_MISMATCH = "credential_mismatch"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"
    NOT_OWNED = "not_owned"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    FRAME_TOO_BIG = "frame_too_big"
    RATE_LIMITED = "rate_limited"
    INTERNAL = "internal"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def frame(
        self, *, ref: str | None = None, task_id: int | None = None, attempt: int | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if ref is not None:
            out["ref"] = ref
        if task_id is not None:
            out["task_id"] = task_id
        if attempt is not None:
            # The agent may hold a newer attempt of the same task by the time this arrives.
            out["attempt"] = attempt
        return out


AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_GROUP_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
INT32_MAX = 2**31 - 1
# Deep enough for any Terraform state (nested blocks inside resources inside modules).
FRAME_MAX_DEPTH = 64
MAX_LOG_TEXT = 64 * 1024
MAX_TASKS_LISTED = 256


def agent_group(agent_id: str) -> str:
    """The Channels group of one agent's connections: ``agent.<agent_id>``, made valid for any id."""
    safe = _GROUP_UNSAFE.sub("-", agent_id)
    if safe != agent_id or len(safe) > 80:
        # Two ids that sanitise alike must not share a group: suffix a digest of the original.
        safe = "%s-%s" % (safe[:60], hashlib.sha256(agent_id.encode("utf-8")).hexdigest()[:16])
    return "agent.%s" % safe


def task_group(task_id: int) -> str:
    """The Channels group of a task's live log and status (the hub's UI sockets join it)."""
    return "task.%d" % task_id


Validator = Callable[[str, Any], Any]


def _int(lo: int, hi: int) -> Validator:
    def check(name: str, value: Any) -> int:
        # bool is an int in Python but not in the protocol.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(Code.INVALID_FIELD, "%s must be an integer" % name, field=name)
        if not lo <= value <= hi:
            raise ProtocolError(Code.INVALID_FIELD, "%s must be between %d and %d" % (name, lo, hi), field=name)
        return value

    return check


def _str(max_len: int, *, pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = ()) -> Validator:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError(Code.INVALID_FIELD, "%s must be a string" % name, field=name)
        if len(value) > max_len:
            raise ProtocolError(Code.INVALID_FIELD, "%s is longer than %d characters" % (name, max_len), field=name)
        reason = inputs.bad_text(value)
        if reason is not None:
            # PostgreSQL text holds no NUL and psycopg cannot encode a lone surrogate: refusing
            # them here keeps a write from failing halfway.
            raise ProtocolError(Code.INVALID_FIELD, "%s: %s" % (name, reason), field=name)
        if pattern is not None and not pattern.match(value):
            raise ProtocolError(Code.INVALID_FIELD, "%s has an invalid format" % name, field=name)
        if choices and value not in choices:
            raise ProtocolError(Code.INVALID_FIELD, "%s must be one of %s" % (name, ", ".join(choices)), field=name)
        return value

    return check


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(Code.INVALID_FIELD, "%s must be a boolean" % name, field=name)
    return value


def _nullable(inner: Validator) -> Validator:
    def check(name: str, value: Any) -> Any:
        return None if value is None else inner(name, value)

    return check


def _labels(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 32:
        raise ProtocolError(Code.INVALID_FIELD, "%s must be an object of at most 32 entries" % name, field=name)
    key_check, value_check = _str(63), _str(255)
    return {key_check(name, k): value_check(name, v) for k, v in value.items()}


def _task_refs(name: str, value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list) or len(value) > MAX_TASKS_LISTED:
        raise ProtocolError(
            Code.INVALID_FIELD, "%s must be a list of at most %d" % (name, MAX_TASKS_LISTED), field=name
        )
    refs = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"task_id", "attempt"}:
            raise ProtocolError(Code.INVALID_FIELD, "%s entries must be {task_id, attempt}" % name, field=name)
        refs.append((_int(1, 2**63 - 1)(name, item["task_id"]), _int(1, INT32_MAX)(name, item["attempt"])))
    return refs


def _plan_summary(name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or set(value) != {"add", "change", "destroy"}:
        raise ProtocolError(Code.INVALID_FIELD, "%s must be {add, change, destroy}" % name, field=name)
    return {key: _int(0, INT32_MAX)(name, value[key]) for key in ("add", "change", "destroy")}


def _state(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(Code.INVALID_FIELD, "%s must be a Terraform state object" % name, field=name)
    lineage = value.get("lineage", "")
    if not isinstance(lineage, str) or len(lineage) > 64:
        raise ProtocolError(Code.INVALID_FIELD, "%s.lineage must be a string of at most 64" % name, field=name)
    if "\\u0000" in json.dumps(value):
        raise ProtocolError(Code.INVALID_FIELD, "%s must not contain NUL characters" % name, field=name)
    return value


_TASK_ID = _int(1, 2**63 - 1)
_ATTEMPT = _int(1, INT32_MAX)
RESULT_STATUSES = ("succeeded", "failed", "errored", "cancelled")


@dataclass(frozen=True)
class Schema:
    required: dict[str, Validator]
    optional: dict[str, Validator]


SCHEMAS: dict[str, Schema] = {
    "hello": Schema(
        required={"protocol": _int(1, 1000), "agent_id": _str(64, pattern=AGENT_ID_RE), "capacity": _int(1, 64)},
        optional={
            "name": _str(200),
            "version": _str(50),
            "labels": _labels,
            "tasks": _task_refs,
            "draining": _bool,
        },
    ),
    "heartbeat": Schema(required={}, optional={"tasks": _task_refs, "draining": _bool}),
    "task.accept": Schema(required={"task_id": _TASK_ID, "attempt": _ATTEMPT}, optional={}),
    "task.reject": Schema(required={"task_id": _TASK_ID, "attempt": _ATTEMPT}, optional={"reason": _str(200)}),
    "task.log": Schema(
        required={"task_id": _TASK_ID, "attempt": _ATTEMPT, "seq": _int(0, INT32_MAX), "text": _str(MAX_LOG_TEXT)},
        optional={},
    ),
    "task.result": Schema(
        required={"task_id": _TASK_ID, "attempt": _ATTEMPT, "status": _str(20, choices=RESULT_STATUSES)},
        optional={
            "exit_code": _nullable(_int(-255, 255)),
            "plan_summary": _nullable(_plan_summary),
            "state": _nullable(_state),
            "drifted": _nullable(_bool),
            "error": _str(10000),
        },
    ),
}


def parse_frame(text: str) -> dict[str, Any]:
    """Decode and validate one agent→server text frame (see the module docstring)."""
    try:
        frame = inputs.decode_json(text, max_depth=FRAME_MAX_DEPTH)
    except inputs.Refused as exc:
        if exc.path and isinstance(exc.path[0], str):
            # A NUL or a lone surrogate in a field (PostgreSQL and psycopg could not store it):
            # that field's fault, not the frame's syntax.
            field = exc.path[0][:50]
            raise ProtocolError(Code.INVALID_FIELD, "%s: %s" % (field, exc), field=field) from None
        raise ProtocolError(Code.INVALID_JSON, "the frame is not valid JSON: %s" % exc) from None
    if not isinstance(frame, dict):
        raise ProtocolError(Code.INVALID_FRAME, "a frame must be a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(Code.INVALID_FRAME, "a frame needs a string field 'type'", field="type")
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(Code.UNKNOWN_TYPE, "unknown frame type %r" % kind[:50], field="type")
    out: dict[str, Any] = {"type": kind}
    for name, check in schema.required.items():
        if name not in frame:
            raise ProtocolError(Code.INVALID_FIELD, "%s is required" % name, field=name)
        out[name] = check(name, frame[name])
    for name, check in schema.optional.items():
        if name in frame:
            out[name] = check(name, frame[name])
    unknown = set(frame) - set(out)
    if unknown:
        first = sorted(str(key)[:50] for key in unknown)[0]
        raise ProtocolError(Code.INVALID_FRAME, "unknown field %r in %s" % (first, kind), field=first)
    return out
