from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from apps.hub import actions, drafts
from apps.hub.models import Draft
from apps.workspaces.models import Workspace

pytestmark = pytest.mark.django_db

ADDR = 'aws_instance.web["a"]'


def test_drafts_are_per_user_replaced_on_save_and_unreadable_once_expired(
    workspace: Workspace, alice: User, bob: User
) -> None:
    now = timezone.now()
    drafts.do_save_draft(user=alice, workspace=workspace, resource_address=ADDR, content={"v": 1}, now=now)
    saved = drafts.do_save_draft(user=alice, workspace=workspace, resource_address=ADDR, content={"v": 2}, now=now)
    assert Draft.objects.count() == 1
    assert drafts.get_draft(user=alice, workspace=workspace, resource_address=ADDR, now=now).content == {"v": 2}
    with pytest.raises(actions.NotFound):
        drafts.get_draft(user=bob, workspace=workspace, resource_address=ADDR, now=now)
    with pytest.raises(actions.NotFound):
        drafts.get_draft(user=alice, workspace=workspace, resource_address=ADDR, now=saved.expires_at)
    assert drafts.do_delete_draft(user=alice, workspace=workspace, resource_address=ADDR)
    assert not drafts.do_delete_draft(user=alice, workspace=workspace, resource_address=ADDR)


def test_an_oversized_draft_is_refused_and_the_old_one_kept(workspace: Workspace, alice: User, settings: Any) -> None:
    settings.HUB_DRAFT_MAX_BYTES = 100
    drafts.do_save_draft(user=alice, workspace=workspace, resource_address=ADDR, content={"v": 1})
    with pytest.raises(actions.HubError, match="larger than 100 bytes"):
        drafts.do_save_draft(user=alice, workspace=workspace, resource_address=ADDR, content={"v": "x" * 200})
    assert drafts.get_draft(user=alice, workspace=workspace, resource_address=ADDR).content == {"v": 1}
