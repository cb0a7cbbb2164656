from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from apps.agents.models import AgentPool, hash_token

pytestmark = pytest.mark.django_db


def test_pool_token_is_stored_hashed_and_checks() -> None:
    pool = AgentPool(name="p")
    raw = pool.set_new_token()
    pool.save()
    pool.refresh_from_db()
    assert raw not in pool.token_hash
    assert pool.token_hash == hash_token(raw)
    assert pool.check_token(raw)
    assert not pool.check_token(raw + "x")


def test_kubernetes_pool_needs_a_deployment() -> None:
    pool = AgentPool(name="k", kind="kubernetes")
    pool.set_new_token()
    with pytest.raises(IntegrityError, match="pool_kubernetes_needs_deployment"), transaction.atomic():
        pool.save()


def test_max_replicas_below_min_is_refused() -> None:
    pool = AgentPool(name="m", min_replicas=3, max_replicas=2)
    pool.set_new_token()
    with pytest.raises(IntegrityError, match="pool_max_gte_min"), transaction.atomic():
        pool.save()
