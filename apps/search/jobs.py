"""Leader jobs of CMDB search: ``search_index`` (always) and ``embedding`` (when a model is installed).

Both write only inside ``tick.fenced()``. ``embedding`` is registered only when the optional model
is installed and ``EMBEDDINGS`` is not ``off`` (apps/search/engine.py): without it, search uses
the full-text vectors ``search_index`` keeps.
"""

from __future__ import annotations

import logging

from django.conf import settings

from apps.coordination.fencing import Tick
from apps.coordination.registry import job
from apps.search import embedding as embedding_work
from apps.search import engine, indexer

logger = logging.getLogger(__name__)


@job(name="search_index", every=settings.JOB_SEARCH_INDEX_EVERY)
def search_index(tick: Tick) -> None:
    """Rebuild the search texts of the queued workspaces (their resources changed, or they were saved)."""
    changed = 0
    due = indexer.due_workspaces(settings.SEARCH_INDEX_WORKSPACES_PER_TICK)
    for workspace_id in due:
        if tick.stopping():  # the term is ending: the rest stays queued for the next leader
            break
        changed += indexer.index_workspace(workspace_id, atomic=tick.fenced)
    if changed:
        logger.info("search_index: %d texts changed in %d workspaces", changed, len(due))


def embedding(tick: Tick) -> None:
    """Embed documents whose text changed since their last embedding, in bounded batches."""
    result = embedding_work.embed_pending(
        fenced=tick.fenced,
        stopping=tick.stopping,
        batch_size=settings.EMBEDDING_BATCH_SIZE,
        max_batches=settings.EMBEDDING_MAX_BATCHES_PER_TICK,
        budget_seconds=settings.EMBEDDING_TICK_SECONDS,
    )
    if result.embedded or result.reset:
        logger.info(
            "embedding: %d embedded in %d batches (%.2f s), %d old-model vectors reset",
            result.embedded,
            result.batches,
            result.seconds,
            result.reset,
        )


if engine.available():
    job(name="embedding", every=settings.JOB_EMBEDDING_EVERY)(embedding)
