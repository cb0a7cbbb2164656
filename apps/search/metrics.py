"""Prometheus metrics of CMDB search, exported by runleader's /metrics (the leader embeds).

The document counts are taken by each ``embedding`` tick (a scrape never queries the database):
pending is exact and O(pending) through the partial index; the total is PostgreSQL's row
estimate of the table, so nothing ever counts a large table.
"""

from __future__ import annotations

from django.db import connection
from prometheus_client import Counter, Gauge

from apps.coordination.metrics import REGISTRY

EMBEDDED = Counter("iacplatform_embeddings", "Resource texts embedded by this process.", registry=REGISTRY)
RATE = Gauge("iacplatform_embedding_rate", "Embeddings per second of the last batch.", registry=REGISTRY)
DOCUMENTS = Gauge("iacplatform_search_documents", "CMDB search documents.", ["state"], registry=REGISTRY)
MODEL = Gauge("iacplatform_embedding_model_info", "The embedding model in use (1).", ["model"], registry=REGISTRY)


def observe_batch(count: int, seconds: float) -> None:
    EMBEDDED.inc(count)
    if seconds > 0:
        RATE.set(count / seconds)


def set_model(key: str) -> None:
    MODEL.clear()
    MODEL.labels(model=key).set(1)


def document_counts() -> dict[str, int]:
    """{"pending": exact, "total_estimate": planner's estimate} for /metrics and clusterstatus."""
    from apps.search.models import SearchDocument

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM %s WHERE NOT (embedded_sha256 = text_sha256)"
            % connection.ops.quote_name(SearchDocument._meta.db_table)
        )
        pending = cursor.fetchone()[0]
        cursor.execute(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = %s::regclass",
            [SearchDocument._meta.db_table],
        )
        row = cursor.fetchone()
    counts = {"pending": int(pending), "total_estimate": int(row[0]) if row else 0}
    for state, value in counts.items():
        DOCUMENTS.labels(state=state).set(value)
    return counts
