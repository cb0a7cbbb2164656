from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from apps.hub import actions
from apps.workspaces.models import Workspace

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("model", "shown"), [("editingsession", b"waiting"), ("takeoverrequest", b"pending"), ("draft", b"0 drafts")]
)
def test_operators_see_the_hub_tables_in_the_admin(
    workspace: Workspace, alice: User, bob: User, model: str, shown: bytes
) -> None:
    actions.do_open_session(user=alice, workspace=workspace, resource_address="a.b")
    waiting = actions.do_open_session(user=bob, workspace=workspace, resource_address="a.b")
    actions.do_request_takeover(user=bob, session_id=waiting.session_id)
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw-root-123"))
    response = client.get("/admin/hub/%s/" % model)
    assert response.status_code == 200
    assert shown in response.content
