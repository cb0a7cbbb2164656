"""Steady load for chaos rounds: plans, applies and drift checks over the cluster's workspaces.

Runs in a thread of the harness through the queue's own ``enqueue_task`` (so the harness is also a
sync caller of the channel layer). It keeps the queue near a target depth instead of a fixed rate,
so that a slow round does not pile up work that later rounds would be blamed for.
"""

from __future__ import annotations

import logging
import random
import threading

from django.db import OperationalError, close_old_connections
from django.db.utils import InterfaceError

from apps.agents.models import AgentPool, hash_token
from apps.workspaces.actions import enqueue_task
from apps.workspaces.models import Task, Variable, Workspace

logger = logging.getLogger(__name__)

MAIN_TF = """\
variable "n" {
  type    = string
  default = "0"
}

output "value" {
  value = "round ${var.n}"
}
"""


def create_workspaces(*, count: int, token: str) -> list[int]:
    pool, _ = AgentPool.objects.update_or_create(name="chaos", defaults={"token_hash": hash_token(token)})
    ids = []
    for index in range(count):
        workspace, _ = Workspace.objects.update_or_create(
            name="chaos-%02d" % index,
            defaults={
                "pool": pool,
                "terraform_files": {"main.tf": MAIN_TF},
                "drift_check_enabled": True,
                "drift_check_interval_minutes": 1,
            },
        )
        Variable.objects.update_or_create(
            workspace=workspace, category="terraform", key="n", defaults={"value": str(index)}
        )
        ids.append(workspace.pk)
    return ids


class Load(threading.Thread):
    def __init__(self, *, workspace_ids: list[int], seed: int, target_depth: int = 8, interval: float = 0.25) -> None:
        super().__init__(name="chaos-load", daemon=True)
        self.workspace_ids = workspace_ids
        self.random = random.Random(seed)
        self.target_depth = target_depth
        self.interval = interval
        self.stopping = threading.Event()
        self.enqueued = 0
        self.errors = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            close_old_connections()
            try:
                self.step()
            except (OperationalError, InterfaceError):
                # The database is being restarted by a fault: the queue is down, so is the load.
                self.errors += 1
                close_old_connections()
            self.stopping.wait(self.interval)

    def step(self) -> None:
        depth = Task.objects.exclude(status__in=Task.TERMINAL).count()
        if depth >= self.target_depth:
            return
        workspace = Workspace.objects.get(pk=self.random.choice(self.workspace_ids))
        kind = self.random.choices(["plan", "apply", "drift_check"], weights=[5, 3, 2])[0]
        enqueue_task(workspace=workspace, type=kind, timeout_seconds=120)
        self.enqueued += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
