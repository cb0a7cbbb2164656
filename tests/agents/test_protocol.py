from __future__ import annotations

import json
import re

import pytest

from apps.agents.protocol import AGENT_ID_RE, ProtocolError, agent_group, parse_frame

HELLO = {"type": "hello", "protocol": 2, "agent_id": "a-1", "capacity": 2}
LOG = {"type": "task.log", "task_id": 7, "attempt": 1, "seq": 0, "text": "hi"}
RESULT = {"type": "task.result", "task_id": 7, "attempt": 1, "status": "succeeded"}


def test_valid_frames_parse_to_the_same_fields() -> None:
    assert parse_frame(json.dumps(HELLO)) == HELLO
    assert parse_frame(json.dumps(LOG)) == LOG
    full = {
        **RESULT,
        "exit_code": 2,
        "drifted": True,
        "plan_summary": {"add": 1, "change": 2, "destroy": 3},
        "state": {"lineage": "x", "serial": 3},
        "error": "",
    }
    assert parse_frame(json.dumps(full)) == full
    assert parse_frame(json.dumps({"type": "heartbeat", "tasks": [{"task_id": 1, "attempt": 2}]}))["tasks"] == [(1, 2)]


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ("{not json", "invalid_json", None),
        ("", "invalid_json", None),
        ('{"type": "hello", "protocol": NaN}', "invalid_json", None),
        ("[" * 100000 + "]" * 100000, "invalid_json", None),
        ("[1, 2]", "invalid_frame", None),
        ('"hello"', "invalid_frame", None),
        ("{}", "invalid_frame", "type"),
        ('{"type": 5}', "invalid_frame", "type"),
        ('{"type": "launch.missiles"}', "unknown_type", "type"),
        (json.dumps({**HELLO, "protocol": "1"}), "invalid_field", "protocol"),
        (json.dumps({**HELLO, "protocol": True}), "invalid_field", "protocol"),
        (json.dumps({**HELLO, "capacity": 1.0}), "invalid_field", "capacity"),
        (json.dumps({**HELLO, "capacity": 0}), "invalid_field", "capacity"),
        (json.dumps({**HELLO, "capacity": 10**40}), "invalid_field", "capacity"),
        (json.dumps({**HELLO, "agent_id": "../../etc"}), "invalid_field", "agent_id"),
        (json.dumps({**HELLO, "agent_id": "a" * 65}), "invalid_field", "agent_id"),
        (json.dumps({**HELLO, "labels": {"k": 1}}), "invalid_field", "labels"),
        (json.dumps({**HELLO, "labels": ["k"]}), "invalid_field", "labels"),
        (json.dumps({**HELLO, "tasks": [{"task_id": "1", "attempt": 1}]}), "invalid_field", "tasks"),
        (json.dumps({**HELLO, "tasks": [1]}), "invalid_field", "tasks"),
        (json.dumps({**HELLO, "surprise": 1}), "invalid_frame", "surprise"),
        (json.dumps({k: v for k, v in HELLO.items() if k != "agent_id"}), "invalid_field", "agent_id"),
        (json.dumps({**LOG, "task_id": -1}), "invalid_field", "task_id"),
        (json.dumps({**LOG, "task_id": None}), "invalid_field", "task_id"),
        (json.dumps({**LOG, "seq": 2**31}), "invalid_field", "seq"),
        (json.dumps({**LOG, "text": "x" * (64 * 1024 + 1)}), "invalid_field", "text"),
        (json.dumps({**LOG, "text": "nul\x00byte"}), "invalid_field", "text"),
        (json.dumps({**LOG, "text": ["a"]}), "invalid_field", "text"),
        (json.dumps({**LOG, "text": "lone \ud800 surrogate"}), "invalid_field", "text"),
        (json.dumps({**LOG, "text": "\udfff"}), "invalid_field", "text"),
        ("[" * 5000, "invalid_json", None),
        (json.dumps({**RESULT, "state": {"x": "\udc80"}}), "invalid_field", "state"),
        (json.dumps({**RESULT, "status": "pwned"}), "invalid_field", "status"),
        (json.dumps({**RESULT, "plan_summary": {"add": 1}}), "invalid_field", "plan_summary"),
        (
            json.dumps({**RESULT, "plan_summary": {"add": -1, "change": 0, "destroy": 0}}),
            "invalid_field",
            "plan_summary",
        ),
        (json.dumps({**RESULT, "state": []}), "invalid_field", "state"),
        (json.dumps({**RESULT, "state": {"lineage": 5}}), "invalid_field", "state"),
        (json.dumps({**RESULT, "state": {"x": "a\x00b"}}), "invalid_field", "state"),
        (json.dumps({**RESULT, "drifted": "yes"}), "invalid_field", "drifted"),
        (json.dumps({**RESULT, "exit_code": 1000}), "invalid_field", "exit_code"),
    ],
)
def test_malformed_frames_raise_a_protocol_error_with_a_code(text: str, code: str, field: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(text)
    assert info.value.code == code
    assert info.value.field == field
    frame = info.value.frame(ref="x")
    assert frame["type"] == "error"
    assert frame["code"] == code


def test_agent_groups_are_valid_channels_names_and_distinct() -> None:
    valid = re.compile(r"^[A-Za-z0-9._-]{1,99}$")
    ids = ["a-1", "a 1", "a/1", "ä", "x" * 100, "x" * 99 + "y", "a.b_c-d"]
    groups = [agent_group(agent_id) for agent_id in ids]
    assert all(valid.match(group) for group in groups), groups
    assert len(set(groups)) == len(ids)
    assert agent_group("a-1") == "agent.a-1"


def test_agent_ids_are_restricted_to_group_safe_characters() -> None:
    assert AGENT_ID_RE.match("host-1.pool_a")
    assert not AGENT_ID_RE.match("-leading-dash")
    assert not AGENT_ID_RE.match("spa ce")
