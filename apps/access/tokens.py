"""API tokens for scripts and CI: django-rest-knox's ``AuthToken``.

A token is ``iacu_`` + 64 hex digits (256 random bits); only its SHA-512 digest is stored, with
the first characters (``token_key``) indexed to find the row, and it is compared in constant time.
Every token expires (at most ``API_TOKEN_TTL`` after it was made; the authentication refuses and
deletes an expired one, and the ``api_token_cleanup`` job deletes the rest). Revoking is deleting
the row: the next request with it is a 401. Who: a user makes, lists and revokes their own tokens
(``/api/v1/tokens/``); platform admins manage everyone's in the admin and with
``manage.py createapitoken``.
Does NOT: show a token again after it was made, or let a token outlive its user (deleting or
deactivating the user ends it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from knox.models import AuthToken


def max_lifetime() -> timedelta:
    return timedelta(seconds=settings.API_TOKEN_TTL)


def do_create_token(*, user: Any, lifetime: timedelta | None = None) -> tuple[AuthToken, str]:
    """A new token for ``user``, valid for ``lifetime`` (at most API_TOKEN_TTL); the raw token is
    returned once and never stored."""
    lifetime = min(lifetime or max_lifetime(), max_lifetime())
    if lifetime <= timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    return AuthToken.objects.create(user=user, expiry=lifetime)


def do_revoke_tokens(*, user: Any, token_key: str | None = None) -> int:
    """Revoke the user's token with this key (or all of them); the number revoked."""
    tokens = AuthToken.objects.filter(user=user)
    if token_key is not None:
        tokens = tokens.filter(token_key=token_key)
    deleted, _ = tokens.delete()
    return deleted


def do_delete_expired_tokens(*, now: datetime, limit: int = 5000) -> int:
    with transaction.atomic():
        expired = list(
            AuthToken.objects.filter(expiry__lt=now).order_by("expiry").values_list("digest", flat=True)[:limit]
        )
        deleted, _ = AuthToken.objects.filter(digest__in=expired, expiry__lt=now).delete()
    return deleted
