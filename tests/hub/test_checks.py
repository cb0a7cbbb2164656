from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from apps.hub.checks import check_hub_settings
from harness.processes import ROOT


def test_hub_settings_pass_the_checks_by_default() -> None:
    assert check_hub_settings(None) == []


@pytest.mark.parametrize("name", ["HUB_SESSION_TIMEOUT", "HUB_TAKEOVER_REQUEST_TIMEOUT", "HUB_DRAFT_TTL"])
def test_a_non_positive_hub_duration_fails_the_checks(settings: Any, name: str) -> None:
    setattr(settings, name, 0)
    [error] = check_hub_settings(None)
    assert error.id == "hub.E001" and name in error.msg


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HUB_SESSION_TIMEOUT", "soon", "HUB_SESSION_TIMEOUT must be a number"),
        ("HUB_DRAFT_MAX_BYTES", "1.5", "HUB_DRAFT_MAX_BYTES must be an integer"),
        ("CHANNEL_LAYER_BACKEND", "carrier-pigeon", "CHANNEL_LAYER_BACKEND must be"),
    ],
)
def test_bad_hub_environment_values_fail_clearly_at_start(name: str, value: str, message: str) -> None:
    env = dict(os.environ, **{name: value})
    result = subprocess.run(
        [sys.executable, "-c", "import iacplatform.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
