"""What queues a workspace for search indexing, always in the transaction of the change itself."""

from __future__ import annotations

from typing import Any

from apps.search import indexer


def resources_changed(sender: Any, *, workspace_id: int, **kwargs: Any) -> None:
    indexer.mark(workspace_id)


def workspace_saved(sender: Any, *, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    # A rename changes every text of the workspace; other saves change nothing there, and the
    # indexer writes only texts that changed. Fixtures (raw) load their own search rows.
    if not raw:
        indexer.mark(instance.pk)
