from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.agents import actions


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
        try:
            pool, token, revoked = actions.do_create_or_rotate_pool(
                name=name, capacity=capacity, rotate=rotate, revoke_agents_too=revoke_agents
            )
        except actions.PoolRefused as exc:
            raise CommandError(str(exc)) from exc
        if revoke_agents:
            self.stderr.write("Revoked the credentials of %d agents." % revoked)
        self.stderr.write("Pool %r ready. Its token (shown once, stored only as a hash):" % pool.name)
        self.stdout.write(token)
