"""API tokens: hashed, expiring, revocable (django-rest-knox through apps/access/tokens.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from apps.access.tokens import do_create_token, do_delete_expired_tokens
from tests.access.fixtures import make_user

pytestmark = pytest.mark.django_db


def _refused(response: Any) -> bool:
    # 403, not 401: the first authentication class (the session's) sends no WWW-Authenticate.
    return response.status_code == 403 and response.json()["detail"] in ("Invalid token.", "User inactive or deleted.")


def _with(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + token)
    return client


def test_createapitoken_prints_a_token_once_stored_only_as_a_hash(capsys: pytest.CaptureFixture[str]) -> None:
    make_user("ci")
    call_command("createapitoken", "ci", "--days", "2")
    token = capsys.readouterr().out.strip()
    assert token.startswith("iacu_") and len(token) == 5 + 64
    row = AuthToken.objects.get()
    assert token not in row.digest and row.digest != token and len(row.digest) == 128  # SHA-512
    assert token.startswith(row.token_key)  # only the lookup prefix is kept in the clear
    assert timedelta(days=1.9) < row.expiry - timezone.now() < timedelta(days=2)
    assert _with(token).get("/api/v1/tokens/").status_code == 200
    assert _refused(_with(token[:-1] + ("0" if token[-1] != "0" else "1")).get("/api/v1/tokens/"))


def test_createapitoken_refuses_what_it_cannot_do(settings: object) -> None:
    make_user("ci")
    with pytest.raises(CommandError, match="no active user"):
        call_command("createapitoken", "nobody")
    with pytest.raises(CommandError, match="API_TOKEN_TTL"):
        call_command("createapitoken", "ci", "--days", "3650")
    with pytest.raises(CommandError, match="positive"):
        call_command("createapitoken", "ci", "--days", "0")
    assert not AuthToken.objects.exists()


def test_an_expired_token_is_refused_and_deleted() -> None:
    user = make_user("ci")
    instance, token = do_create_token(user=user)
    AuthToken.objects.filter(pk=instance.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    assert _refused(_with(token).get("/api/v1/tokens/"))
    assert not AuthToken.objects.exists()


def test_users_list_make_and_revoke_only_their_own_tokens() -> None:
    alice, bob = make_user("alice"), make_user("bob")
    _, alice_token = do_create_token(user=alice)
    bob_instance, bob_token = do_create_token(user=bob)
    api = _with(alice_token)
    made = api.post("/api/v1/tokens/", {"days": 1}, format="json")
    assert made.status_code == 201, made.content
    new_token = made.json()["token"]
    assert _with(new_token).get("/api/v1/tokens/").status_code == 200
    listed = api.get("/api/v1/tokens/").json()["results"]
    assert {t["token_key"] for t in listed} == {alice_token[:15], new_token[:15]}
    assert all("token" not in t and "digest" not in t for t in listed)  # never shown again
    assert api.delete("/api/v1/tokens/%s/" % bob_instance.token_key).status_code == 404  # not hers
    assert _with(bob_token).get("/api/v1/tokens/").status_code == 200
    assert api.delete("/api/v1/tokens/%s/" % made.json()["token_key"]).status_code == 204
    assert _refused(_with(new_token).get("/api/v1/tokens/"))  # revoked at once
    assert api.post("/api/v1/tokens/", {"days": 100000}, format="json").status_code == 400
    assert api.post("/api/v1/tokens/", {"days": "soon"}, format="json").status_code == 400


def test_revoke_all_and_the_cleanup_of_expired_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    user, other = make_user("ci"), make_user("other")
    for _ in range(3):
        do_create_token(user=user)
    kept, _ = do_create_token(user=other)
    expired, _ = do_create_token(user=other)
    AuthToken.objects.filter(pk=expired.pk).update(expiry=timezone.now() - timedelta(minutes=1))
    call_command("createapitoken", "ci", "--revoke-all")
    assert "Revoked 3" in capsys.readouterr().err
    assert do_delete_expired_tokens(now=timezone.now()) == 1
    assert list(AuthToken.objects.values_list("pk", flat=True)) == [kept.pk]


def test_an_inactive_users_token_is_refused() -> None:
    user = make_user("ci")
    _, token = do_create_token(user=user)
    user.is_active = False
    user.save()
    assert _refused(_with(token).get("/api/v1/tokens/"))
