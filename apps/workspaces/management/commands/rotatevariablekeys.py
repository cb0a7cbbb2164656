"""``manage.py rotatevariablekeys``: re-encrypt every sensitive value with the first key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.workspaces.encryption import UndecryptableValue
from apps.workspaces.variables import do_rotate_keys


class Command(BaseCommand):
    help = (
        "Re-encrypt every sensitive variable with the first of VARIABLE_ENCRYPTION_KEYS; afterwards the "
        "other keys can be removed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = do_rotate_keys()
        except UndecryptableValue as exc:
            raise CommandError("%s: keep the key it was encrypted with in the list and run again" % exc) from exc
        self.stdout.write("Re-encrypted %d sensitive values." % count)
