"""The REST side of apps/access/policy.py: one DRF permission class, the default of every view.

A view declares ``access_rules``: for each action of a viewset (or HTTP method of a plain
APIView) the role it needs on the object's workspace, a :class:`PerObject` rule giving that role
from the object, an :class:`ActionChecks` (the action asks the policy itself, once it has loaded
what the call is about), or one of the platform-wide rules below. The schema states each
operation's rule as ``x-access`` (apps/access/schema.py). An action without a rule is refused to everybody
(fail closed), and the schema matrix test (tests/access/test_matrix.py) fails for it.
Lists and lookups are narrowed by the views' querysets (``visible_to``), so an object the caller
may not read is a 404 before any rule is looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rest_framework.exceptions import NotFound
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

if TYPE_CHECKING:
    # Not at run time: DRF imports the default permission classes while rest_framework.views loads.
    from rest_framework.views import APIView

from apps.access import policy
from apps.access.models import Role

# Only platform admins (pools, agents, every workspace).
PLATFORM_ADMIN = "platform_admin"
# The access.create_workspace permission (or a platform admin).
CREATE_WORKSPACE = "create_workspace"
# Any active user: the call concerns no workspace (the API root).
AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class PerObject:
    """The role needed depends on the object (a task's type): ``role_of(obj)``."""

    doc: str
    role_of: Callable[[Any], Role]


@dataclass(frozen=True)
class ActionChecks:
    """Any active user gets this far; the action itself asks the policy once it has loaded the
    workspace the call is about (through a session, a request, or the body)."""

    doc: str


AccessRule = Role | str | PerObject | ActionChecks

# The undescribed form, for views whose action asks the policy itself.
ACTION_CHECKS = ActionChecks("checked by the action once it has loaded the workspace the call is about")


def describe(rule: AccessRule) -> str:
    if isinstance(rule, Role):
        return "%s on the workspace" % rule.label
    if isinstance(rule, PerObject | ActionChecks):
        return rule.doc
    return rule


# OPTIONS describes the API (which the schema publishes anyway) to any active user.
DESCRIBE = {"metadata", "options"}


def rule_for(request: Request, view: APIView) -> AccessRule | None:
    rules: dict[str, AccessRule] = getattr(view, "access_rules", {})
    key = getattr(view, "action", None) or (request.method or "").lower()
    return rules.get(key)


def _handles(request: Request, view: APIView) -> bool:
    method = (request.method or "").lower()
    action_map = getattr(view, "action_map", None)
    if action_map is not None:
        return method in action_map
    return hasattr(view, method)


class WorkspaceRolePermission(BasePermission):
    message = "Your role on this workspace does not allow this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not policy.is_active_user(request.user):
            return False
        if (getattr(view, "action", None) or (request.method or "").lower()) in DESCRIBE:
            return True
        if not _handles(request, view):
            return True  # nothing runs: DRF answers 405
        rule = rule_for(request, view)
        if rule is None:
            return False
        if rule == PLATFORM_ADMIN:
            self.message = "Only platform admins may do this."
            return policy.is_platform_admin(request.user)
        if rule == CREATE_WORKSPACE:
            self.message = "Creating workspaces needs the access.create_workspace permission."
            return policy.can_create_workspace(request.user)
        return True  # roles: decided per object; ActionChecks: by the action; AUTHENTICATED: nothing more

    def has_object_permission(self, request: Request, view: APIView, obj: Any) -> bool:
        rule = rule_for(request, view)
        if isinstance(rule, Role):
            role = rule
        elif isinstance(rule, PerObject):
            role = rule.role_of(obj)
        else:
            # Platform-wide rules were settled in has_permission; ActionChecks by the action.
            return rule is not None
        workspace_id = getattr(obj, getattr(view, "workspace_attr", "workspace_id"))
        verdict = policy.check(request.user, workspace_id, role)
        if verdict is policy.Verdict.INVISIBLE:
            raise NotFound()
        return verdict is policy.Verdict.ALLOWED
