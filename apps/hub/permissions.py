"""Who may see what over the hub.

- An editing session (its REST calls and its socket ``ws/sessions/<id>/``): only the user who
  opened it.
- A task's log (``ws/tasks/<id>/logs/``): an active superuser, or an active user with the
  ``workspaces.view_task`` model permission (directly or through a group).
- Forcing a takeover: the ``hub.force_takeover`` permission (superusers have every permission).
"""

from __future__ import annotations

from typing import Any


def can_view_task_logs(user: Any) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    return bool(user.is_superuser or user.has_perm("workspaces.view_task"))


def can_force_takeover(user: Any) -> bool:
    return bool(user.is_authenticated and user.has_perm("hub.force_takeover"))
