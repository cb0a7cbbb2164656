from __future__ import annotations

from typing import Any

from apps.agents.checks import check_agent_settings


def ids(errors: list[Any]) -> list[str]:
    return sorted(error.id for error in errors)


def test_the_defaults_pass() -> None:
    assert check_agent_settings(None) == []


def test_bad_agent_settings_are_reported(settings: Any) -> None:
    settings.AGENT_HEARTBEAT_INTERVAL = 10
    settings.AGENT_OFFLINE_THRESHOLD = 15
    settings.AGENT_MAX_FRAME_BYTES = 4096
    settings.JOB_PENDING_TASKS_EVERY = 0
    settings.AGENT_PRUNE_AFTER = 1
    assert ids(check_agent_settings(None)) == ["agents.E001", "agents.E002", "agents.E003", "agents.E004"]
