"""Keeps ``SearchDocument`` texts in step with the CMDB (the ``search_index`` job).

A workspace is due when it is in ``SearchIndexQueue``: ``cmdb_sync`` marks it in the transaction
that changed its resources (the ``resources_changed`` signal), and so does every save of the
workspace (a rename changes its texts). For each due workspace, one transaction (fenced by the
caller) locks the workspace row as ``cmdb_sync`` does, so it sees exactly one synced serial,
rebuilds the texts of its resources, writes only those whose text changed (so only they are
re-embedded) and takes the workspace off the queue; documents of vanished resources go with their
resource (ON DELETE CASCADE). Guarantees: idempotent; bounded work per call (``limit``
workspaces), O(due) to find. Does NOT: embed (apps/search/embedding.py) or read states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from django.db import connection, transaction

from apps.search.models import SearchDocument, SearchIndexQueue
from apps.search.text import resource_text, text_sha256
from apps.workspaces.models import Resource, Workspace
from apps.workspaces.variables import redaction_values

Atomic = Callable[[], AbstractContextManager[object]]
# Where the workspace keeps values its documents must never contain (see text.py).
SecretsOf = Callable[[Workspace], Iterable[str]]


def workspace_secrets(workspace: Workspace) -> list[str]:
    """Every variable value of the workspace, sensitive ones decrypted: none may reach a searchable
    text (apps/workspaces/variables.py)."""
    return redaction_values(workspace.pk)


def mark(workspace_id: int) -> None:
    """Queue a workspace for re-indexing, in the caller's transaction (idempotent)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO %s (workspace_id, queued_at) VALUES (%%s, now()) ON CONFLICT DO NOTHING"
            % connection.ops.quote_name(SearchIndexQueue._meta.db_table),
            [workspace_id],
        )


def due_workspaces(limit: int) -> list[int]:
    return list(SearchIndexQueue.objects.order_by("workspace_id").values_list("workspace_id", flat=True)[:limit])


def index_workspace(
    workspace_id: int, *, atomic: Atomic = transaction.atomic, secrets: SecretsOf = workspace_secrets
) -> int:
    """Rebuild the documents of one workspace; returns how many texts changed."""
    with atomic():
        workspace = Workspace.objects.select_for_update(no_key=True).filter(pk=workspace_id).first()
        if workspace is None:
            SearchIndexQueue.objects.filter(workspace_id=workspace_id).delete()
            return 0
        hidden = list(secrets(workspace))
        existing = dict(
            SearchDocument.objects.filter(workspace_id=workspace_id).values_list("resource_id", "text_sha256")
        )
        to_create: list[SearchDocument] = []
        to_update: list[SearchDocument] = []
        for resource in Resource.objects.filter(workspace_id=workspace_id).order_by("pk"):
            text = resource_text(
                type=resource.type,
                name=resource.name,
                address=resource.address,
                module=resource.module,
                mode=resource.mode,
                workspace=workspace.name,
                attributes=resource.attributes if isinstance(resource.attributes, dict) else {},
                secrets=hidden,
            )
            sha = text_sha256(text)
            if existing.get(resource.pk) == sha:
                continue
            document = SearchDocument(resource=resource, workspace_id=workspace_id, text=text, text_sha256=sha)
            (to_update if resource.pk in existing else to_create).append(document)
        SearchDocument.objects.bulk_create(to_create, batch_size=500)
        SearchDocument.objects.bulk_update(to_update, ["text", "text_sha256"], batch_size=500)
        # Under the workspace row lock: a change that marks it again waits for this commit.
        SearchIndexQueue.objects.filter(workspace_id=workspace_id).delete()
    return len(to_create) + len(to_update)
