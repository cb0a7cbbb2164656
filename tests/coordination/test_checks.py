from __future__ import annotations

import pytest
from django.test import override_settings

from apps.coordination.checks import check_leader_election


def _ids(**overrides: object) -> list[str]:
    with override_settings(**overrides):
        return [str(error.id) for error in check_leader_election(None)]


def test_defaults_pass() -> None:
    assert _ids() == []


def test_renew_deadline_not_shorter_than_lease_duration_is_rejected() -> None:
    assert "coordination.E003" in _ids(LEADER_ELECTION_LEASE_DURATION=10, LEADER_ELECTION_RENEW_DEADLINE=10)


def test_renew_deadline_must_leave_room_for_a_jittered_retry() -> None:
    assert "coordination.E004" in _ids(LEADER_ELECTION_RENEW_DEADLINE=2.4, LEADER_ELECTION_RETRY_PERIOD=2)


@pytest.mark.parametrize("backend", ["consul", "", "everyone"])
def test_unknown_backend_is_rejected(backend: str) -> None:
    assert "coordination.E001" in _ids(LEADER_ELECTION_BACKEND=backend)


def test_non_positive_timings_are_rejected() -> None:
    assert "coordination.E002" in _ids(LEADER_ELECTION_RETRY_PERIOD=0)


def test_a_retention_window_of_zero_days_is_rejected() -> None:
    assert "coordination.E006" in _ids(JOBRUN_RETENTION_DAYS=0)
