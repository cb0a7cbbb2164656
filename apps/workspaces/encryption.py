"""Encryption at rest of sensitive variable values (Fernet: AES-128-CBC + HMAC-SHA256).

Guarantees: values are encrypted with the first key of ``VARIABLE_ENCRYPTION_KEYS`` and decrypted
with any of them (``MultiFernet``), so keys rotate by putting a new key first, running
``manage.py rotatevariablekeys`` (re-encrypts every value with it), then removing the old key; a
token that no key opens raises :class:`UndecryptableValue` whose text names no value.
Without configured keys one key is derived from ``SECRET_KEY`` (then rotating SECRET_KEY makes
stored values unreadable: production sets its own keys, as deploy/ does).
Does NOT: protect values from someone holding a key and the database, or from the agents that
receive them in ``task.dispatch`` (they must, to run Terraform).
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class UndecryptableValue(Exception):
    pass


def derived_key(secret_key: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(b"iacplatform variables\x00" + secret_key.encode()).digest())


@functools.lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys] if keys else [Fernet(derived_key(secret_key))])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.VARIABLE_ENCRYPTION_KEYS), settings.SECRET_KEY)


def encrypt(value: str) -> str:
    return fernet().encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise UndecryptableValue("no configured VARIABLE_ENCRYPTION_KEYS key decrypts this value") from None


def rotate(token: str) -> str:
    """The same value encrypted with the first key."""
    try:
        return fernet().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise UndecryptableValue("no configured VARIABLE_ENCRYPTION_KEYS key decrypts this value") from None
