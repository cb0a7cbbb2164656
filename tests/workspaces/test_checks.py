from __future__ import annotations

from typing import Any

from apps.workspaces.checks import check_state_backend_settings


def ids(errors: list[Any]) -> list[str]:
    return sorted(error.id for error in errors)


def test_the_defaults_and_a_service_url_pass(settings: Any) -> None:
    assert check_state_backend_settings(None) == []
    settings.TERRAFORM_STATE_BACKEND_URL = "https://iacplatform-web.iac.svc:8000"
    assert check_state_backend_settings(None) == []


def test_bad_state_backend_settings_are_reported(settings: Any) -> None:
    settings.TERRAFORM_STATE_BACKEND_URL = "ws://web:8000"
    settings.TERRAFORM_STATE_MAX_BYTES = 100
    settings.TERRAFORM_STATE_CREDENTIAL_SLACK = 0
    assert ids(check_state_backend_settings(None)) == ["workspaces.E001", "workspaces.E002", "workspaces.E003"]
    settings.TERRAFORM_STATE_BACKEND_URL = "web:8000"
    assert "workspaces.E001" in ids(check_state_backend_settings(None))


def test_bad_retention_settings_are_reported(settings: Any) -> None:
    for name in ("TASK_LOG_RETENTION_DAYS", "STATE_VERSION_RETENTION_DAYS", "STATE_TRANSITION_RETENTION_DAYS"):
        setattr(settings, name, 0)
        assert ids(check_state_backend_settings(None)) == ["workspaces.E003"], name
        setattr(settings, name, 1)
    settings.JOB_STATE_VERSION_RETENTION_EVERY = -1
    assert ids(check_state_backend_settings(None)) == ["workspaces.E003"]
    settings.JOB_STATE_VERSION_RETENTION_EVERY = 300
    settings.STATE_VERSIONS_KEEP = 0
    assert ids(check_state_backend_settings(None)) == ["workspaces.E004"]
