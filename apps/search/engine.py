"""The embedding model of this process: loaded once, on first use, only where it is installed.

``EMBEDDINGS=auto`` (the default) uses the model when its packages (requirements-embeddings.txt)
are installed, ``off`` never does. Without a model the ``embedding`` job is not registered and
search answers by PostgreSQL full-text search over the same texts.
"""

from __future__ import annotations

import threading
from functools import lru_cache

from django.conf import settings

from apps.search.minilm import MiniLM, ModelUnavailable, model_dir

_lock = threading.Lock()


@lru_cache(maxsize=1)
def available() -> bool:
    if settings.EMBEDDINGS == "off":
        return False
    try:
        import safetensors  # noqa: F401
        import threadpoolctl  # noqa: F401
        import tokenizers  # noqa: F401

        model_dir()
    except (ImportError, ModelUnavailable):
        return False
    return True


_model: MiniLM | None = None


def model() -> MiniLM:
    """The loaded model (ModelUnavailable when not installed or turned off)."""
    global _model
    if not available():
        raise ModelUnavailable("embeddings are off or the model is not installed")
    with _lock:
        if _model is None:
            # One BLAS thread by default: the model shares its process (the leader's jobs, a web
            # replica's requests) and a shared 2-CPU node; OpenBLAS threads spinning against other
            # work made single-text encoding 10x slower under load (docs/architecture.md).
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=settings.EMBEDDING_BLAS_THREADS, user_api="blas")
            _model = MiniLM()
        return _model


def model_key(m: MiniLM) -> str:
    """What is stored beside each vector: a change of name or version re-embeds."""
    return "%s@%s" % (m.name, m.version)
