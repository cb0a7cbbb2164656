"""System checks for the agent and task-queue settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

# A task.log frame carries up to 64 KiB of text, which JSON may escape to six bytes a character.
MIN_FRAME_BYTES = 64 * 1024 * 6 + 1024


@register()
def check_agent_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    durations = {
        name: getattr(settings, name)
        for name in (
            "AGENT_HEARTBEAT_INTERVAL",
            "AGENT_OFFLINE_THRESHOLD",
            "AGENT_PRUNE_AFTER",
            "AGENT_HELLO_TIMEOUT",
            "TASK_DISPATCH_ACCEPT_TIMEOUT",
            "AGENT_SHUTDOWN_GRACE",
            "AGENT_RECONNECT_MAX_DELAY",
            "JOB_PENDING_TASKS_EVERY",
            "JOB_TASK_TIMEOUT_EVERY",
            "JOB_AGENT_CLEANUP_EVERY",
            "JOB_DRIFT_CHECK_EVERY",
            "JOB_AGENT_AUTOSCALER_EVERY",
        )
    }
    for name, value in durations.items():
        if value <= 0:
            errors.append(Error("%s must be positive, got %s." % (name, value), id="agents.E001"))
    if settings.AGENT_OFFLINE_THRESHOLD < 2 * settings.AGENT_HEARTBEAT_INTERVAL:
        errors.append(
            Error(
                "AGENT_OFFLINE_THRESHOLD (%ss) must be at least twice AGENT_HEARTBEAT_INTERVAL (%ss)."
                % (settings.AGENT_OFFLINE_THRESHOLD, settings.AGENT_HEARTBEAT_INTERVAL),
                hint="Otherwise one late heartbeat makes a healthy agent lose its running tasks.",
                id="agents.E002",
            )
        )
    if settings.AGENT_MAX_FRAME_BYTES < MIN_FRAME_BYTES:
        errors.append(
            Error(
                "AGENT_MAX_FRAME_BYTES (%d) is below %d." % (settings.AGENT_MAX_FRAME_BYTES, MIN_FRAME_BYTES),
                hint="A full task.log frame (64 KiB of text, JSON-escaped) must fit.",
                id="agents.E003",
            )
        )
    if settings.AGENT_PRUNE_AFTER < settings.AGENT_OFFLINE_THRESHOLD:
        errors.append(
            Error(
                "AGENT_PRUNE_AFTER must not be shorter than AGENT_OFFLINE_THRESHOLD.",
                hint="An agent is pruned only after it has been offline.",
                id="agents.E004",
            )
        )
    return errors
