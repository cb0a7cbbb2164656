"""The ``embedding`` job's work: embed documents whose text changed, in bounded batches.

Each batch is read, embedded outside any transaction (CPU work holds no locks), then written in
one fenced transaction that stores a vector only if the document still has the text it was made
from. Guarantees: resumable after a crash or failover with nothing skipped (pending is a property
of the rows: ``embedded_sha256 <> text_sha256``) and nothing re-embedded that did not change; a
deposed leader's batch commits nothing (StaleEpoch); a model change (name or version) marks
every vector of the old model pending, a bounded batch per tick. Does NOT: hold a transaction
open while the model runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from django.db import transaction

from apps.search import engine, metrics
from apps.search.models import EmbeddingModelState
from apps.search.store import VectorStore

logger = logging.getLogger(__name__)

Fenced = Callable[[], AbstractContextManager[object]]


@dataclass
class EmbedResult:
    embedded: int = 0
    batches: int = 0
    reset: int = 0
    seconds: float = 0.0


def embed_pending(
    *,
    fenced: Fenced = transaction.atomic,
    batch_size: int,
    max_batches: int,
    budget_seconds: float,
    stopping: Callable[[], bool] = lambda: False,
) -> EmbedResult:
    m = engine.model()
    key = engine.model_key(m)
    store = VectorStore(key, m.dimension)
    result = EmbedResult()
    started = time.monotonic()
    with fenced():
        state = EmbeddingModelState.objects.select_for_update().filter(pk=1).first()
        if state is None or state.model != key:
            result.reset = store.forget_other_models(limit=batch_size * max_batches)
            if result.reset < batch_size * max_batches:
                EmbeddingModelState.objects.update_or_create(pk=1, defaults={"model": key})
                if state is not None:
                    logger.info("embedding: model %s replaced by %s; old vectors pending again", state.model, key)
    while result.batches < max_batches and not stopping():
        batch = store.pending(batch_size)
        if not batch:
            break
        began = time.monotonic()
        vectors = m.encode([p.text for p in batch], batch_size=batch_size)
        with fenced():
            written = store.write(batch, vectors)
        elapsed = time.monotonic() - began
        result.embedded += written
        result.batches += 1
        metrics.observe_batch(written, elapsed)
        if time.monotonic() - started > budget_seconds:
            break
    result.seconds = time.monotonic() - started
    metrics.set_model(key)
    metrics.document_counts()
    return result
