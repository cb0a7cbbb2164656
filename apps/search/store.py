"""Where vectors live: the one small interface between the search and its storage.

``VectorStore`` keeps float32 unit vectors in ``SearchDocument.embedding`` (bytea) and searches
them exactly: the candidates are narrowed in SQL to the caller's workspaces and the current model,
then scored by cosine (a dot product of unit vectors) in NumPy. pgvector would replace exactly
this class: a ``vector(384)`` column, ``ORDER BY embedding <=> %s`` and, past ~100k candidate
vectors, an HNSW index (docs/architecture.md, "CMDB search"). Guarantees: a vector is written
only together with the text hash it was made from, and only if that is still the document's text
(a text changed meanwhile stays pending). Does NOT: approximate, or cache vectors between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import psycopg
from django.db import connection
from django.db.models import F

from apps.search.models import SearchDocument


@dataclass(frozen=True)
class Pending:
    resource_id: int
    text: str
    text_sha256: str


@dataclass(frozen=True)
class Hit:
    resource_id: int
    score: float


def _table() -> str:
    return connection.ops.quote_name(SearchDocument._meta.db_table)


class VectorStore:
    def __init__(self, model: str, dimension: int) -> None:
        self.model = model
        self.dimension = dimension

    def pending(self, limit: int) -> list[Pending]:
        """Documents whose text has no embedding yet (served by the partial index), oldest first."""
        rows = (
            SearchDocument.objects.exclude(embedded_sha256=F("text_sha256"))
            .order_by("resource_id")
            .values_list("resource_id", "text", "text_sha256")[:limit]
        )
        return [Pending(*row) for row in rows]

    def write(self, batch: Sequence[Pending], vectors: npt.NDArray[np.float32]) -> int:
        """Store vectors for the texts they were made from; returns how many were written."""
        if not batch:
            return 0
        blobs = [np.ascontiguousarray(v, dtype="<f4").tobytes() for v in vectors]
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE %s AS d SET embedding = v.embedding, embedded_sha256 = v.sha, model = %%s, "
                "embedded_at = clock_timestamp() "
                "FROM (SELECT unnest(%%s::bigint[]) AS id, unnest(%%s::text[]) AS sha, "
                "unnest(%%s::bytea[]) AS embedding) AS v "
                "WHERE d.resource_id = v.id AND d.text_sha256 = v.sha" % _table(),
                [self.model, [p.resource_id for p in batch], [p.text_sha256 for p in batch], blobs],
            )
            return cursor.rowcount

    def forget_other_models(self, limit: int) -> int:
        """Mark up to ``limit`` vectors of another model as pending; 0 when none are left."""
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE %s SET embedded_sha256 = '' WHERE resource_id IN (SELECT resource_id FROM %s "
                "WHERE model <> %%s AND embedded_sha256 <> '' LIMIT %%s)" % (_table(), _table()),
                [self.model, limit],
            )
            return cursor.rowcount

    def search(self, query: npt.NDArray[np.float32], workspace_ids: Sequence[int], limit: int) -> list[Hit]:
        """The ``limit`` best documents of these workspaces by cosine similarity, best first."""
        if not workspace_ids:
            return []
        connection.ensure_connection()
        raw = connection.connection
        assert raw is not None
        # Binary results: each vector arrives as its 1,536 raw bytes, not as 3,072 hex digits that
        # psycopg would decode row by row.
        # (A server-side-binding cursor: Django's default client-side cursors cannot ask for binary.)
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(
                "SELECT resource_id, embedding FROM %s WHERE workspace_id = ANY(%%s) AND model = %%s "
                "AND embedded_sha256 = text_sha256" % _table(),
                [list(workspace_ids), self.model],
                binary=True,
            )
            rows = cursor.fetchall()
        if not rows:
            return []
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype="<f4").reshape(len(rows), self.dimension)
        scores = matrix @ query.astype(np.float32)
        top = min(limit, len(rows))
        best = np.argpartition(-scores, top - 1)[:top]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [Hit(resource_id=int(ids[i]), score=float(scores[i])) for i in best]
