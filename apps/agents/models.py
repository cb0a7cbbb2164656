from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import models
from django.db.models import Q


def hash_token(raw: str) -> str:
    # Pool tokens and agent credentials are 256-bit random secrets, so one round of SHA-256 is
    # enough; no salt is needed to resist guessing, and an unsalted hash lets a token find its
    # pool (a credential its agent) with one indexed lookup.
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


CREDENTIAL_PREFIX = "iacpa_"


class AgentPool(models.Model):
    class Kind(models.TextChoices):
        STATIC = "static"
        KUBERNETES = "kubernetes"

    name = models.SlugField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.STATIC)
    k8s_namespace = models.CharField("Kubernetes namespace", max_length=63, blank=True)
    k8s_deployment = models.CharField("Kubernetes Deployment", max_length=253, blank=True)
    min_replicas = models.PositiveIntegerField(default=0)
    max_replicas = models.PositiveIntegerField(default=1)
    agent_capacity = models.PositiveIntegerField("tasks per agent", default=1)
    scale_down_delay_seconds = models.PositiveIntegerField(default=300)
    desired_replicas = models.PositiveIntegerField(null=True, blank=True, editable=False)
    scale_down_pending_since = models.DateTimeField(null=True, blank=True, editable=False)
    scaled_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(max_replicas__gte=models.F("min_replicas")), name="pool_max_gte_min"),
            models.CheckConstraint(condition=Q(agent_capacity__gte=1), name="pool_capacity_positive"),
            models.CheckConstraint(
                condition=Q(kind="static") | (~Q(k8s_namespace="") & ~Q(k8s_deployment="")),
                name="pool_kubernetes_needs_deployment",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def set_new_token(self) -> str:
        """Give the pool a fresh token; return it (the only time it is ever visible)."""
        raw = "iacp_" + secrets.token_urlsafe(32)
        self.token_hash = hash_token(raw)
        return raw

    def check_token(self, raw: str) -> bool:
        return hmac.compare_digest(self.token_hash, hash_token(raw))


class AgentQuerySet(models.QuerySet["Agent"]):
    def online(self) -> AgentQuerySet:
        return self.exclude(status=Agent.Status.OFFLINE)


class Agent(models.Model):
    class Status(models.TextChoices):
        ONLINE = "online"
        BUSY = "busy"
        OFFLINE = "offline"

    agent_id = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True)
    pool = models.ForeignKey(AgentPool, on_delete=models.PROTECT, related_name="agents")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OFFLINE)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # The web replica (POD_NAME) whose WebSocket the agent is connected to; NULL when offline.
    connected_pod = models.CharField(max_length=100, null=True, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    version = models.CharField(max_length=50, blank=True)
    capacity = models.PositiveIntegerField(default=1)
    labels = models.JSONField(default=dict, blank=True)
    # SHA-256 of the agent's own credential, issued when it registered with its pool's token;
    # empty: not registered (yet, or revoked), the next hello with the pool token registers it.
    credential_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    registered_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AgentQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["pool", "status"]), models.Index(fields=["connected_pod"])]
        constraints = [
            models.UniqueConstraint(
                fields=["credential_hash"], condition=~Q(credential_hash=""), name="agent_credential_unique"
            )
        ]

    def __str__(self) -> str:
        return self.name or self.agent_id

    @property
    def registered(self) -> bool:
        return bool(self.credential_hash)

    def set_new_credential(self) -> str:
        """Give the agent a fresh credential; return it (the only time it is ever visible)."""
        raw = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        self.credential_hash = hash_token(raw)
        return raw
