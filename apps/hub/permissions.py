"""Who may do what over the hub, in the terms of apps/access/policy.py (the platform's one rule).

- Editing (opening a session, heartbeats, claiming, asking for or answering a takeover, drafts)
  needs ``write`` on the workspace; a session and its socket belong to the user who opened it
  alone. Closing one's own session needs nothing more: it only gives something up.
- Forcing a takeover: ``admin`` on the workspace, or ``write`` plus the ``hub.force_takeover``
  permission (for on-call responders who are not workspace admins).
- A task's log (REST and ``ws/tasks/<id>/logs/``): ``read`` on the task's workspace.

Sockets are refused with :func:`socket_refusal`, the same verdicts as REST: not logged in 4403,
invisible or missing 4404 (REST: 404), role too low 4403 (REST: 403).
"""

from __future__ import annotations

from typing import Any

from apps.access import policy
from apps.access.models import Role

CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

EDIT = Role.WRITE
VIEW_LOGS = Role.READ


def can_force_takeover(user: Any, workspace_id: int) -> bool:
    if policy.has_role(user, workspace_id, Role.ADMIN):
        return True
    return policy.has_role(user, workspace_id, EDIT) and bool(user.has_perm("hub.force_takeover"))


def socket_refusal(user: Any, *, workspace_id: int | None, role: Role) -> int | None:
    """The close code refusing ``user`` a socket about ``workspace_id`` (None: the object does
    not exist), or None when the socket is allowed."""
    if not policy.is_active_user(user):
        return CLOSE_FORBIDDEN
    if workspace_id is None:
        return CLOSE_NOT_FOUND
    verdict = policy.check(user, workspace_id, role)
    if verdict is policy.Verdict.INVISIBLE:
        return CLOSE_NOT_FOUND
    if verdict is policy.Verdict.FORBIDDEN:
        return CLOSE_FORBIDDEN
    return None
