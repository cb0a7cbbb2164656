"""CMDB search: the embedding model's speed and footprint, and search latency and recall beside
PostgreSQL full-text search (the fallback) on the same documents.

- Model: load time and RSS growth in a fresh process; embeddings per second at batch sizes
  1, 16 and 64 over resource texts as apps/search/text.py builds them (2 CPUs, NumPy's BLAS).
- Search at 10k and 100k documents: the 30-resource CMDB of the tests (harness/cmdb30.py),
  embedded for real, among filler resources of unrelated types (networking, IAM, monitoring),
  whose texts are built and embedded the same way (distinct texts, reused across fillers by
  SQL COPY so that seeding 100k takes seconds, not the model's ~20 minutes). Each query of a
  fixed set is timed as the API runs it (candidates narrowed to the caller's workspaces: all of
  them here, the worst case), semantic and full text side by side, 20 rounds at 10k and 5 at
  100k; recall@5 is the share of queries whose intended resource is among the first five.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.report import Progress, Row
from harness.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
POOL = "bench-search"
SIZES = (10_000, 100_000)
# Rounds of the query set per size (each round: every query, semantic and full text).
QUERY_ROUNDS = {10_000: 20, 100_000: 5}
FILLER_TEXTS = 600

# (query, intended address): what a person types, and what they mean.
QUERIES = [
    ("database", "aws_db_instance.billing"),
    ("the database behind the billing service", "aws_db_instance.billing"),
    ("public buckets", "aws_s3_bucket.public_assets"),
    ("storage bucket for access logs", "aws_s3_bucket.logs"),
    ("kubernetes deployment of the api", "kubernetes_deployment.api"),
    ("message queue for invoices", "aws_sqs_queue.invoices"),
    ("redis cache", "aws_elasticache_cluster.sessions"),
    ("load balancer in front of the web servers", "aws_lb.front"),
    ("tls certificate for the website", "aws_acm_certificate.site"),
    ("serverless function that renders invoices", "aws_lambda_function.invoice_renderer"),
]

FILLER_TYPES = [
    "aws_iam_policy",
    "aws_iam_role_policy_attachment",
    "aws_route_table",
    "aws_route_table_association",
    "aws_network_acl",
    "aws_eip",
    "aws_nat_gateway",
    "aws_cloudwatch_metric_alarm",
    "aws_ssm_parameter",
    "google_project_iam_member",
    "google_compute_firewall",
    "google_compute_route",
    "kubernetes_config_map",
    "kubernetes_role_binding",
    "kubernetes_service_account",
    "null_resource",
    "random_id",
    "time_sleep",
]
FILLER_NAMES = ["main", "ops", "audit", "team_a", "team_b", "shared", "edge", "ci", "infra", "legacy"]


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret")
    import django

    django.setup()


LOAD_PROBE = """
import json, resource, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
import numpy, tokenizers, safetensors.numpy  # the imports are not the model
before = rss()
t = time.monotonic()
from apps.search.minilm import MiniLM
m = MiniLM()
m.encode(["warm up"])
print(json.dumps({"load_s": time.monotonic() - t, "rss_mb": rss() - before, "total_rss_mb": rss()}))
"""


def measure_load() -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def filler_texts() -> list[tuple[str, str, str]]:
    """(type, name, text) of distinct filler resources."""
    from apps.search.text import resource_text

    out = []
    for i in range(FILLER_TEXTS):
        type_ = FILLER_TYPES[i % len(FILLER_TYPES)]
        name = "%s_%d" % (FILLER_NAMES[(i // len(FILLER_TYPES)) % len(FILLER_NAMES)], i)
        text = resource_text(
            type=type_,
            name=name,
            address="%s.%s" % (type_, name),
            module="module.m%d" % (i % 7) if i % 3 else "",
            mode="managed",
            workspace="fill-%d" % (i % 50),
            attributes={"name": name.replace("_", "-"), "tags": {"owner": FILLER_NAMES[i % len(FILLER_NAMES)]}},
        )
        out.append((type_, name, text))
    return out


def throughput(model: object, texts: list[str], progress: Progress) -> list[Row]:
    """Embeddings/s per batch size, with 1 BLAS thread (the default) and with 2, side by side."""
    from threadpoolctl import threadpool_limits

    rows = []
    for batch in (1, 16, 64):
        sample = texts[: 32 if batch == 1 else 128]
        rates = {}
        for threads in (1, 2):
            progress.step("embeddings/s at batch %d, %d BLAS threads" % (batch, threads))
            with threadpool_limits(limits=threads, user_api="blas"):
                started = time.monotonic()
                model.encode(sample, batch_size=batch)  # type: ignore[attr-defined]
                rates[threads] = len(sample) / (time.monotonic() - started)
        rows.append(
            Row(
                bench="bench_embedding",
                scenario="all-MiniLM-L6-v2 on NumPy, batch %d" % batch,
                metric="embeddings per second (1 BLAS thread)",
                unit="/s",
                measured=round(rates[1], 1),
                goal="(measured)",
                met=None,
                reference="2 BLAS threads",
                reference_value=round(rates[2], 1),
            )
        )
    return rows


def seed(size: int, filler: list[tuple[str, str, str]], vectors: list[bytes], model_key: str) -> list[int]:
    """Workspaces with ``size`` resources and documents in all: the 30 real ones plus fillers."""
    from django.db import connection

    from apps.agents.models import AgentPool
    from apps.search.text import text_sha256
    from apps.workspaces.models import Workspace
    from harness import cmdb30

    Workspace.objects.filter(pool__name=POOL).delete()
    AgentPool.objects.filter(name=POOL).delete()
    pool = AgentPool(name=POOL)
    pool.set_new_token()
    pool.save()
    real = cmdb30.build(pool)
    from apps.search import embedding, indexer

    for ws in real.values():
        indexer.index_workspace(ws.pk)
    embedding.embed_pending(batch_size=64, max_batches=10, budget_seconds=600)
    workspaces = [Workspace.objects.create(name="bench-fill-%d" % i, pool=pool).pk for i in range(max(1, size // 1000))]
    count = size - 30
    raw = connection.connection
    assert raw is not None
    with raw.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM workspaces_resource")
        first_id = int(cursor.fetchone()[0]) + 1
        with cursor.copy(
            "COPY workspaces_resource (id, workspace_id, address, type, name, provider, module, mode, "
            "index_key, attributes, state_serial, updated_at) FROM STDIN"
        ) as copy:
            for i in range(count):
                type_, name, _ = filler[i % len(filler)]
                copy.write_row(
                    (
                        first_id + i,
                        workspaces[i % len(workspaces)],
                        "%s.%s_%d" % (type_, name, i),
                        type_,
                        name,
                        "",
                        "",
                        "managed",
                        None,
                        "{}",
                        1,
                        "now",
                    )
                )
        with cursor.copy(
            "COPY search_searchdocument (resource_id, workspace_id, text, text_sha256, embedding, "
            "embedded_sha256, model, embedded_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(count):
                text = filler[i % len(filler)][2] + " #%d" % i
                sha = text_sha256(text)
                copy.write_row(
                    (
                        first_id + i,
                        workspaces[i % len(workspaces)],
                        text,
                        sha,
                        vectors[i % len(vectors)],
                        sha,
                        model_key,
                        "now",
                        "now",
                    )
                )
        cursor.execute("SELECT setval(pg_get_serial_sequence('workspaces_resource', 'id'), %s)", [first_id + count])
        cursor.execute("ANALYZE workspaces_resource; ANALYZE search_searchdocument")
    raw.commit()
    return [ws.pk for ws in real.values()] + workspaces


def search_rows(size: int, workspace_ids: list[int], progress: Progress) -> list[Row]:
    from apps.search import search

    rows = []
    found: dict[str, int] = {"semantic": 0, "fulltext": 0}
    latencies: dict[str, list[float]] = {"semantic": [], "fulltext": []}
    for round_ in range(QUERY_ROUNDS[size]):
        progress.step("search at %d documents, round %d/%d" % (size, round_ + 1, QUERY_ROUNDS[size]))
        for query, intended in QUERIES:
            for mode, func in (("semantic", search.semantic), ("fulltext", search.fulltext)):
                started = time.perf_counter()
                answer = func(query, workspace_ids, 5)
                latencies[mode].append((time.perf_counter() - started) * 1000)
                if round_ == 0 and intended in [r.address for r in answer.results]:
                    found[mode] += 1
    for mode in ("semantic", "fulltext"):
        for q in (50, 99):
            rows.append(
                Row(
                    bench="bench_embedding",
                    scenario="%s search, %d documents" % (mode, size),
                    metric="p%d latency" % q,
                    unit="ms",
                    measured=round(percentile(latencies[mode], q), 2),
                    goal="(measured)",
                    met=None,
                    reference="fulltext" if mode == "semantic" else "",
                    reference_value=round(percentile(latencies["fulltext"], q), 2) if mode == "semantic" else None,
                )
            )
        rows.append(
            Row(
                bench="bench_embedding",
                scenario="%s search, %d documents, %d queries" % (mode, size, len(QUERIES)),
                metric="recall@5",
                unit="",
                measured=round(found[mode] / len(QUERIES), 2),
                goal=">= full text" if mode == "semantic" else "(reference)",
                met=found["semantic"] >= found["fulltext"] if mode == "semantic" else None,
            )
        )
    return rows


def run(progress: Progress) -> list[Row]:
    _setup_django()
    import numpy as np

    from apps.agents.models import AgentPool
    from apps.search import engine
    from apps.workspaces.models import Workspace

    if not engine.available():
        raise SystemExit("bench_embedding needs the embedding model: make installs it (requirements-embeddings.txt)")
    progress.step("model load in a fresh process")
    load = measure_load()
    rows = [
        Row(
            "bench_embedding",
            "model load (fresh process)",
            "load time",
            "s",
            round(load["load_s"], 3),
            "(measured)",
            None,
        ),
        Row(
            "bench_embedding",
            "model load (fresh process)",
            "RSS growth",
            "MB",
            round(load["rss_mb"], 1),
            "(measured)",
            None,
        ),
    ]
    model = engine.model()
    filler = filler_texts()
    rows += throughput(model, [t for _, _, t in filler], progress)
    progress.step("embedding %d distinct filler texts" % len(filler))
    vectors = [np.ascontiguousarray(v, dtype="<f4").tobytes() for v in model.encode([t for _, _, t in filler], 64)]
    try:
        for size in SIZES:
            progress.step("seeding %d documents" % size)
            ids = seed(size, filler, vectors, engine.model_key(model))
            rows += search_rows(size, ids, progress)
    finally:
        Workspace.objects.filter(pool__name=POOL).delete()
        AgentPool.objects.filter(name=POOL).delete()
    return rows
