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
