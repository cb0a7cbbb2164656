from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.access import tokens


class Command(BaseCommand):
    help = (
        "Make an API token for a user and print it once (it is stored only as a hash, and expires); "
        "--revoke-all revokes every token of the user instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--days", type=float, default=None, help="lifetime in days (default and maximum: API_TOKEN_TTL)"
        )
        parser.add_argument("--revoke-all", action="store_true", help="revoke every token of the user")

    def handle(self, *args: Any, username: str, days: float | None, revoke_all: bool, **options: Any) -> None:
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError("no active user %r" % username)
        if revoke_all:
            count = tokens.do_revoke_tokens(user=user)
            self.stderr.write("Revoked %d token(s) of %s." % (count, username))
            return
        if days is not None and days <= 0:
            raise CommandError("--days must be positive")
        lifetime = timedelta(days=days) if days is not None else None
        if lifetime is not None and lifetime > tokens.max_lifetime():
            raise CommandError("--days is above API_TOKEN_TTL (%d seconds)" % settings.API_TOKEN_TTL)
        instance, raw = tokens.do_create_token(user=user, lifetime=lifetime)
        self.stderr.write(
            "Token for %s, valid until %s (shown once, stored only as a hash):" % (username, instance.expiry)
        )
        self.stdout.write(raw)
