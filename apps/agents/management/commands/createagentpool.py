from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import IntegrityError, transaction

from apps.agents import actions
from apps.agents.models import AgentPool


class Command(BaseCommand):
    help = "Create an agent pool (or give an existing one a new token with --rotate); prints the token once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--capacity", type=int, default=1, help="tasks per agent")
        parser.add_argument("--rotate", action="store_true", help="replace the token of an existing pool")
        parser.add_argument(
            "--revoke-agents",
            action="store_true",
            help="with --rotate: also revoke the credentials of the pool's registered agents (they disconnect "
            "and must register again with the new token)",
        )

    def handle(self, *args: Any, name: str, capacity: int, rotate: bool, revoke_agents: bool, **options: Any) -> None:
        if revoke_agents and not rotate:
            raise CommandError("--revoke-agents goes with --rotate")
        if capacity < 1:
            raise CommandError("--capacity must be at least 1")
        with transaction.atomic():
            pool = AgentPool.objects.select_for_update().filter(name=name).first()
            if pool is not None and not rotate:
                raise CommandError("pool %r exists; use --rotate to give it a new token" % name)
            pool = pool or AgentPool(name=name, agent_capacity=capacity)
            token = pool.set_new_token()
            try:
                pool.full_clean(exclude=["token_hash"])
                pool.save()
            except IntegrityError as exc:
                raise CommandError("cannot create pool %r: %s" % (name, exc)) from exc
            except ValidationError as exc:
                raise CommandError("invalid pool %r: %s" % (name, exc)) from exc
            if revoke_agents:
                revoked = actions.revoke_agents(list(pool.agents.exclude(credential_hash="")))
                self.stderr.write("Revoked the credentials of %d agents." % revoked)
        self.stderr.write("Pool %r ready. Its token (shown once, stored only as a hash):" % name)
        self.stdout.write(token)
