"""Searching the CMDB: by meaning when vectors exist, else PostgreSQL full-text search.

``search(query, workspace_ids, limit)`` narrows to the given workspaces first (the caller passes
only those the user may read), then ranks: ``semantic`` embeds the query with the same model and
scores every candidate vector exactly (apps/search/store.py); ``fulltext`` ranks
``websearch_to_tsquery('english', q)`` matches by ``ts_rank_cd`` over the same texts. ``auto``
is semantic when this process has the model and the candidates have vectors of it, else full text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db.models import F

from apps.search import engine
from apps.search.models import SearchDocument
from apps.search.store import VectorStore


@dataclass(frozen=True)
class Result:
    resource_id: int
    workspace: str
    address: str
    type: str
    score: float


@dataclass(frozen=True)
class Answer:
    mode: str
    model: str
    results: list[Result]


def _describe(hits: Sequence[tuple[int, float]]) -> list[Result]:
    rows = {
        r["resource_id"]: r
        for r in SearchDocument.objects.filter(resource_id__in=[h[0] for h in hits]).values(
            "resource_id", "workspace__name", "resource__address", "resource__type"
        )
    }
    return [
        Result(
            resource_id=rid,
            workspace=rows[rid]["workspace__name"],
            address=rows[rid]["resource__address"],
            type=rows[rid]["resource__type"],
            score=round(score, 6),
        )
        for rid, score in hits
        if rid in rows
    ]


def semantic(query: str, workspace_ids: Sequence[int], limit: int) -> Answer:
    m = engine.model()
    key = engine.model_key(m)
    vector = m.encode([query])[0]
    hits = VectorStore(key, m.dimension).search(vector, workspace_ids, limit)
    return Answer(mode="semantic", model=key, results=_describe([(h.resource_id, h.score) for h in hits]))


def fulltext(query: str, workspace_ids: Sequence[int], limit: int) -> Answer:
    tsquery = SearchQuery(query, config="english", search_type="websearch")
    rows = (
        SearchDocument.objects.filter(workspace_id__in=list(workspace_ids), search_vector=tsquery)
        .annotate(rank=SearchRank(F("search_vector"), tsquery, cover_density=True))
        .order_by("-rank", "resource_id")
        .values_list("resource_id", "rank")[:limit]
    )
    return Answer(mode="fulltext", model="", results=_describe([(rid, float(rank)) for rid, rank in rows]))


def has_vectors(workspace_ids: Sequence[int]) -> bool:
    if not engine.available():
        return False
    key = engine.model_key(engine.model())
    return SearchDocument.objects.filter(workspace_id__in=list(workspace_ids), model=key).exists()


def search(query: str, workspace_ids: Sequence[int], limit: int, mode: str = "auto") -> Answer:
    if mode == "semantic" or (mode == "auto" and has_vectors(workspace_ids)):
        return semantic(query, workspace_ids, limit)
    return fulltext(query, workspace_ids, limit)
