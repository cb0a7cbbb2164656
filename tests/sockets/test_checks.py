from __future__ import annotations

from typing import Any

import pytest

from apps.sockets.checks import check_socket_cap_settings


def test_the_socket_cap_settings_pass_the_checks_by_default() -> None:
    assert check_socket_cap_settings(None) == []


@pytest.mark.parametrize(
    "name", ["WS_MAX_CONNECTIONS_PER_POOL", "SOCKET_CAP_REFRESH_SECONDS", "SOCKET_CAP_STALE_SECONDS"]
)
def test_a_non_positive_cap_or_interval_fails_the_checks(settings: Any, name: str) -> None:
    setattr(settings, name, 0)
    [error] = check_socket_cap_settings(None)
    assert error.id == "sockets.E001" and name in error.msg


def test_a_window_shorter_than_two_renewals_fails_the_checks(settings: Any) -> None:
    settings.SOCKET_CAP_REFRESH_SECONDS = 10
    settings.SOCKET_CAP_STALE_SECONDS = 15
    [error] = check_socket_cap_settings(None)
    assert error.id == "sockets.E002"
