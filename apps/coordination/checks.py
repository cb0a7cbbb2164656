"""System checks for settings that are individually valid but wrong together."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register

from apps.coordination.elector import BACKENDS, timing_errors


@register()
def check_leader_election(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    duration = settings.LEADER_ELECTION_LEASE_DURATION
    deadline = settings.LEADER_ELECTION_RENEW_DEADLINE
    retry = settings.LEADER_ELECTION_RETRY_PERIOD
    if settings.LEADER_ELECTION_BACKEND not in BACKENDS:
        errors.append(
            Error(
                "LEADER_ELECTION_BACKEND is %r" % settings.LEADER_ELECTION_BACKEND,
                hint="Use one of: %s." % ", ".join(BACKENDS),
                id="coordination.E001",
            )
        )
    hints = {
        "positive": ("coordination.E002", "Leader-election timings must all be positive."),
        "deadline": (
            "coordination.E003",
            "A leader must give up before its lease can expire for the others, or two may lead.",
        ),
        "retry": ("coordination.E004", "The leader needs room for at least one jittered retry before its deadline."),
    }
    problems = timing_errors(lease_duration=duration, renew_deadline=deadline, retry_period=retry)
    for rule, message in problems.items():
        check_id, hint = hints[rule]
        errors.append(
            Error(
                "LEADER_ELECTION_LEASE_DURATION/RENEW_DEADLINE/RETRY_PERIOD = %s/%s/%s: %s."
                % (duration, deadline, retry, message),
                hint=hint,
                id=check_id,
            )
        )
    if settings.JOBRUN_RETENTION_DAYS <= 0 or settings.JOB_JOBRUN_RETENTION_EVERY <= 0:
        errors.append(
            Error(
                "JOBRUN_RETENTION_DAYS and JOB_JOBRUN_RETENTION_EVERY must be positive.",
                hint="Ticks younger than the window are never pruned; a window of 0 would prune every tick.",
                id="coordination.E006",
            )
        )
    if not settings.POD_NAME:
        errors.append(Error("POD_NAME is empty.", hint="Set it from the downward API.", id="coordination.E005"))
    return errors
