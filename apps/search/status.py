"""CMDB search's section of ``clusterstatus`` (apps/coordination/sections.py).

Pending is exact and costs O(pending) (the partial index); the total is the planner's estimate,
so the section never counts a large table.
"""

from __future__ import annotations

from typing import Any

from apps.coordination.sections import status_section
from apps.search import engine
from apps.search.metrics import document_counts
from apps.search.models import EmbeddingModelState


@status_section(name="search", title="CMDB search", order=40)
def search() -> dict[str, Any]:
    counts = document_counts()
    stored = EmbeddingModelState.objects.values_list("model", flat=True).first()
    return {
        "embeddings": "on" if engine.available() else "off (full-text search only)",
        "model": stored or "",
        "documents_pending": counts["pending"],
        "documents_estimate": counts["total_estimate"],
    }


@search.describe
def _search_text(data: dict[str, Any]) -> list[str]:
    return [
        "CMDB search: embeddings %s; model %s; %d documents pending, about %d in all"
        % (data["embeddings"], data["model"] or "(none yet)", data["documents_pending"], data["documents_estimate"])
    ]
