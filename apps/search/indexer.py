"""Keeps ``SearchDocument`` texts in step with the CMDB (the ``search_index`` job).

A workspace is due when the CMDB serial or the name its documents were built from differs from
the workspace's (``SearchIndexState``), or when it has resources but was never indexed. For each
due workspace, one transaction (fenced by the caller) locks the workspace row as ``cmdb_sync``
does, so it sees exactly one synced serial, rebuilds the texts of its resources and writes only
those whose text changed (so only they are re-embedded); documents of vanished resources go with
their resource (ON DELETE CASCADE). Guarantees: idempotent; bounded work per call
(``max_workspaces``). Does NOT: embed (apps/search/embedding.py) or read states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

from django.db import transaction
from django.db.models import F, Q

from apps.search.models import SearchDocument, SearchIndexState
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


def due_workspaces(limit: int) -> list[int]:
    never = Q(search_index_state__isnull=True) & (Q(cmdb_synced_serial__isnull=False) | Q(resources__isnull=False))
    changed = Q(search_index_state__isnull=False) & (
        ~Q(search_index_state__name=F("name"))
        | Q(search_index_state__serial__isnull=True, cmdb_synced_serial__isnull=False)
        | Q(search_index_state__serial__isnull=False, cmdb_synced_serial__isnull=True)
        | ~Q(search_index_state__serial=F("cmdb_synced_serial"))
    )
    return list(
        Workspace.objects.filter(never | changed).order_by("pk").values_list("pk", flat=True).distinct()[:limit]
    )


def index_workspace(
    workspace_id: int, *, atomic: Atomic = transaction.atomic, secrets: SecretsOf = workspace_secrets
) -> int:
    """Rebuild the documents of one workspace; returns how many texts changed."""
    with atomic():
        workspace = Workspace.objects.select_for_update(no_key=True).filter(pk=workspace_id).first()
        if workspace is None:
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
        SearchIndexState.objects.update_or_create(
            workspace_id=workspace_id, defaults={"serial": workspace.cmdb_synced_serial, "name": workspace.name}
        )
    return len(to_create) + len(to_update)
