"""What CMDB resources are searched by: a text per resource, its full-text vector and embedding.

``SearchDocument`` sits beside ``workspaces.Resource`` (one row per resource, deleted with it):
``text`` is built by apps/search/text.py, ``search_vector`` is a stored generated column over it
(the full-text fallback), ``embedding`` the model's vector of the text whose hash is
``embedded_sha256``, made by ``model``. A document needs (re-)embedding exactly when
``embedded_sha256 <> text_sha256`` (a partial index keeps finding them O(pending)).
``SearchIndexQueue`` holds the workspaces whose texts must be rebuilt, so the indexer's work is
O(changed workspaces), never a scan of all of them. ``EmbeddingModelState`` names the model
the stored vectors were made with, so a model change re-embeds everything once.
"""

from __future__ import annotations

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import F, Q


class SearchDocument(models.Model):
    resource = models.OneToOneField(
        "workspaces.Resource", on_delete=models.CASCADE, primary_key=True, related_name="search_document"
    )
    # Denormalised from the resource: every search first narrows to the caller's workspaces.
    workspace = models.ForeignKey("workspaces.Workspace", on_delete=models.CASCADE, related_name="+")
    text = models.TextField()
    text_sha256 = models.CharField(max_length=64)
    search_vector = models.GeneratedField(
        expression=SearchVector("text", config="english"), output_field=SearchVectorField(), db_persist=True
    )
    embedding = models.BinaryField(null=True, blank=True)  # float32, little-endian, unit length
    embedded_sha256 = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=200, blank=True)
    embedded_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            GinIndex(fields=["search_vector"], name="search_document_fts"),
            models.Index(fields=["workspace", "model"], name="search_document_workspace"),
            models.Index(
                fields=["resource"], condition=~Q(embedded_sha256=F("text_sha256")), name="search_document_pending"
            ),
        ]

    def __str__(self) -> str:
        return "search document of resource %d" % self.resource_id


class SearchIndexQueue(models.Model):
    """Workspaces whose search texts must be rebuilt: marked in the same transaction as the change
    (a CMDB sync, a workspace saved), taken off by the indexer's transaction that rebuilt them."""

    workspace = models.OneToOneField(
        "workspaces.Workspace", on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    queued_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return "workspace %d queued for search indexing" % self.workspace_id


class EmbeddingModelState(models.Model):
    """One row: the embedding model the stored vectors were made with (and are being made with)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    model = models.CharField(max_length=200)
    changed_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="embedding_model_state_single_row")]

    def __str__(self) -> str:
        return self.model
