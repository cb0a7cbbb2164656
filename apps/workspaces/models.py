from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.access.policy import VisibleQuerySet


class WorkspaceQuerySet(VisibleQuerySet["Workspace"]):
    workspace_lookup = "pk"


class Workspace(models.Model):
    class DriftStatus(models.TextChoices):
        UNKNOWN = "unknown"
        IN_SYNC = "in_sync"
        DRIFTED = "drifted"
        ERROR = "error"

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    pool = models.ForeignKey("agents.AgentPool", on_delete=models.PROTECT, related_name="workspaces")
    # {"main.tf": "...", ...}: the configuration an agent writes into a fresh directory.
    terraform_files = models.JSONField(default=dict, blank=True)
    # Before migration 0006 variables lived in this column; that migration copied them into
    # Variable rows. Kept (read by nothing here) for the previous release's replicas during a
    # rolling upgrade, a key removed whenever its variable is written (actions.do_set_variable),
    # to be dropped in the next release.
    legacy_variables = models.JSONField(db_column="variables", default=dict, blank=True, editable=False)
    locked = models.BooleanField(default=False)
    locked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    locked_at = models.DateTimeField(null=True, blank=True)
    lock_reason = models.CharField(max_length=200, blank=True)
    drift_check_enabled = models.BooleanField(default=False)
    drift_check_interval_minutes = models.PositiveIntegerField(default=60)
    drift_next_check_at = models.DateTimeField(null=True, blank=True)
    drift_last_checked_at = models.DateTimeField(null=True, blank=True)
    drift_status = models.CharField(max_length=10, choices=DriftStatus.choices, default=DriftStatus.UNKNOWN)
    cmdb_synced_serial = models.IntegerField(null=True, blank=True)
    # The StateVersion id whose resources the CMDB holds (NULL: none; 0: rows of no current
    # state). cmdb_sync is due exactly where it differs from current_state_id: the partial index
    # workspace_cmdb_due (migration 0003) holds those rows only, so the job reads what is due.
    cmdb_synced_state_id = models.BigIntegerField(null=True, blank=True, editable=False)
    # The state Terraform starts from. It moves only forward (same lineage, higher Terraform
    # serial) or by an operator's promote (apps/workspaces/states.py); never to the newest row.
    current_state = models.ForeignKey(
        "StateVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # When state_version_retention should next look at this workspace's versions (NULL: nothing
    # to prune until a state write or a resolved conflict sets it; apps/workspaces/retention.py).
    state_prune_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["drift_check_enabled", "drift_next_check_at"]),
            # state_version_retention reads the due workspaces here: the rest are not in it.
            models.Index(
                fields=["state_prune_at", "id"],
                condition=Q(state_prune_at__isnull=False),
                name="workspace_state_prune_due",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(drift_check_interval_minutes__gte=1), name="workspace_drift_interval_positive"
            )
        ]

    def __str__(self) -> str:
        return self.name

    # Written only by their owners, each with update_fields under the workspace's row lock (the
    # state pointer in states.py, the CMDB sync, state_version_retention).
    PLATFORM_FIELDS = frozenset({"current_state", "state_prune_at", "cmdb_synced_state_id", "cmdb_synced_serial"})

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A whole-row save of an existing workspace (an API PATCH, an admin edit) writes the row
        # as it was loaded: without this, a state write committed meanwhile would be undone (the
        # pointer moved backwards, with no StateTransition). The platform's columns are left out.
        if not self._state.adding and kwargs.get("update_fields") is None and not kwargs.get("force_insert"):
            kwargs["update_fields"] = [
                field.name
                for field in self._meta.concrete_fields
                if not field.primary_key and field.name not in self.PLATFORM_FIELDS
            ]
        super().save(*args, **kwargs)


class TaskQuerySet(VisibleQuerySet["Task"]):
    def active(self) -> TaskQuerySet:
        return self.filter(status__in=Task.ACTIVE)

    def pending(self) -> TaskQuerySet:
        return self.filter(status=Task.Status.PENDING)

    def unfinished(self) -> TaskQuerySet:
        """Pending, dispatched or running: queued work and work in progress."""
        return self.filter(status__in=[Task.Status.PENDING, *Task.ACTIVE])


class Task(models.Model):
    class Type(models.TextChoices):
        PLAN = "plan"
        APPLY = "apply"
        DRIFT_CHECK = "drift_check"

    class Status(models.TextChoices):
        PENDING = "pending"
        DISPATCHED = "dispatched"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        ERRORED = "errored"
        CANCELLED = "cancelled"
        TIMED_OUT = "timed_out"

    ACTIVE = (Status.DISPATCHED, Status.RUNNING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.ERRORED, Status.CANCELLED, Status.TIMED_OUT)

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="tasks")
    type = models.CharField(max_length=12, choices=Type.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    agent = models.ForeignKey("agents.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="tasks")
    attempt = models.PositiveIntegerField(default=1)
    timeout_seconds = models.PositiveIntegerField(default=3600)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    # {"add": n, "change": n, "destroy": n} from the plan.
    plan_summary = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # Log retention (apps/workspaces/retention.py): set in the transaction that deletes the first
    # of the task's chunks; from then on the API and the log socket answer "pruned", never a
    # partial or empty log. The counts sum what was deleted; ``log_prune_complete`` is set once no
    # chunk is left (also for a task that never had one: it is not marked pruned then).
    log_pruned_at = models.DateTimeField(null=True, blank=True, editable=False)
    log_pruned_chunks = models.PositiveIntegerField(default=0, editable=False)
    log_pruned_bytes = models.PositiveBigIntegerField(default=0, editable=False)
    log_prune_complete = models.BooleanField(default=False, editable=False)

    objects = TaskQuerySet.as_manager()

    class Meta:
        constraints = [
            # The invariant of the queue: at most one dispatched or running task per workspace.
            # The advisory lock (workspace, id) serialises scheduling; this index makes a bug in
            # it impossible to commit.
            models.UniqueConstraint(
                fields=["workspace"],
                condition=Q(status__in=["dispatched", "running"]),
                name="one_active_task_per_workspace",
            ),
            models.CheckConstraint(condition=Q(attempt__gte=1), name="task_attempt_positive"),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(fields=["workspace", "status"]),
            models.Index(fields=["agent", "status"]),
            # The task list's order (newest first), overall and per workspace: its first page is
            # read from the index instead of sorting every task ever run.
            models.Index(fields=["created_at", "id"], name="task_created_order"),
            models.Index(fields=["workspace", "created_at", "id"], name="task_workspace_created_order"),
            # task_log_retention reads the oldest finished tasks whose log is not yet gone here;
            # a task leaves the index once its log is pruned.
            models.Index(
                fields=["finished_at", "id"],
                condition=Q(log_prune_complete=False, finished_at__isnull=False),
                name="task_log_retained",
            ),
        ]

    def __str__(self) -> str:
        return "%s #%d on %s (%s)" % (self.type, self.pk or 0, self.workspace_id, self.status)

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class TaskLogChunk(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "seq"], name="log_chunk_unique_seq")]
        ordering = ["task", "seq"]

    def __str__(self) -> str:
        return "task %d chunk %d" % (self.task_id, self.seq)


class StateVersionQuerySet(VisibleQuerySet["StateVersion"]):
    pass


class StateVersion(models.Model):
    """One Terraform state a workspace received. ``serial`` numbers the rows of a workspace (ours);
    ``terraform_serial`` and ``lineage`` are Terraform's own, the ones its rules compare."""

    class Status(models.TextChoices):
        # Was the workspace's current state when stored (or promoted to it later).
        ACCEPTED = "accepted"
        # Reported by a settled or superseded attempt: describes real infrastructure, but never
        # becomes current by itself. An operator promotes or discards it.
        CONFLICT = "conflict"
        DISCARDED = "discarded"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="state_versions")
    serial = models.PositiveIntegerField()
    lineage = models.CharField(max_length=64, blank=True)
    terraform_serial = models.PositiveBigIntegerField(default=0)
    state = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACCEPTED)
    task = models.ForeignKey(Task, on_delete=models.SET_NULL, null=True, blank=True, related_name="state_versions")
    attempt = models.PositiveIntegerField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = StateVersionQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "serial"], name="state_version_unique_serial")]
        indexes = [
            # Unresolved conflicts are few and looked up on every schedule of the workspace.
            models.Index(fields=["workspace"], condition=Q(status="conflict"), name="state_version_conflicts"),
        ]
        ordering = ["workspace", "-serial"]

    def __str__(self) -> str:
        return "%s serial %d" % (self.workspace_id, self.serial)


class StateTransition(models.Model):
    """Every move of a workspace's current-state pointer: who or which task, from, to, when.

    An audit row: it carries the serials and lineages it moved between, so it still reads right
    after state_version_retention deleted a version it pointed to (the link is then NULL)."""

    class Kind(models.TextChoices):
        TERRAFORM = "terraform"  # a state write of the task's current attempt
        PROMOTE = "promote"  # an operator made a version current

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="state_transitions")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    from_version = models.ForeignKey(StateVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    to_version = models.ForeignKey(StateVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    from_serial = models.PositiveBigIntegerField(null=True, blank=True)
    from_lineage = models.CharField(max_length=64, blank=True)
    to_serial = models.PositiveBigIntegerField()
    to_lineage = models.CharField(max_length=64)
    task = models.ForeignKey(Task, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    attempt = models.PositiveIntegerField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "created_at"]),
            # state_transition_retention deletes the oldest rows (of every workspace) from here.
            models.Index(fields=["created_at", "id"], name="state_transition_created"),
        ]
        ordering = ["workspace", "created_at", "pk"]

    def __str__(self) -> str:
        return "%s %s %s -> %s" % (self.workspace_id, self.kind, self.from_serial, self.to_serial)


class ResourceQuerySet(VisibleQuerySet["Resource"]):
    pass


class Resource(models.Model):
    """The CMDB: one row per resource instance of a workspace's newest state version."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="resources")
    address = models.CharField(max_length=1000)
    type = models.CharField(max_length=200)
    name = models.CharField(max_length=200)
    provider = models.CharField(max_length=300, blank=True)
    module = models.CharField(max_length=700, blank=True)
    mode = models.CharField(max_length=10, default="managed")
    index_key = models.JSONField(null=True, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    state_serial = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    objects = ResourceQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "address"], name="resource_unique_address")]
        indexes = [models.Index(fields=["type"])]
        ordering = ["workspace", "address"]

    def __str__(self) -> str:
        return self.address


class StateLockQuerySet(models.QuerySet["StateLock"]):
    def held(self) -> StateLockQuerySet:
        return self.filter(released_at__isnull=True)

    def prune(self, *, released_before: datetime, batch: int) -> int:
        """Delete up to ``batch`` released locks older than ``released_before``, oldest first."""
        ids = list(
            self.filter(released_at__lt=released_before).order_by("released_at").values_list("pk", flat=True)[:batch]
        )
        return self.filter(pk__in=ids).delete()[0] if ids else 0

    def release_for_tasks(self, task_ids: list[int], *, reason: str) -> int:
        """Release the locks the given tasks' attempts hold: a settled attempt keeps no lock."""
        from django.utils import timezone

        return self.held().filter(task_id__in=task_ids).update(released_at=timezone.now(), release_reason=reason)


class StateLock(models.Model):
    """Terraform's state lock (the http backend's LOCK), granted to one attempt of a running task.

    The row with ``released_at`` NULL is the workspace's lock now; released rows are its history."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="state_locks")
    lock_id = models.CharField(max_length=100)
    task = models.ForeignKey(Task, on_delete=models.SET_NULL, null=True, blank=True, related_name="state_locks")
    attempt = models.PositiveIntegerField()
    # Terraform's LockInfo as it sent it: ID, Operation, Info, Who, Version, Created, Path.
    info = models.JSONField(default=dict)
    acquired_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=100, blank=True)

    objects = StateLockQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workspace"], condition=Q(released_at__isnull=True), name="one_state_lock_per_workspace"
            )
        ]
        indexes = [
            models.Index(fields=["task"], condition=Q(released_at__isnull=True), name="state_lock_held_by_task"),
            # state_lock_retention finds the oldest released locks here.
            models.Index(fields=["released_at"], condition=Q(released_at__isnull=False), name="state_lock_released"),
        ]
        ordering = ["workspace", "-acquired_at"]

    def __str__(self) -> str:
        return "%s lock %s (task %s attempt %d)" % (self.workspace_id, self.lock_id, self.task_id, self.attempt)


class VariableQuerySet(VisibleQuerySet["Variable"]):
    pass


class Variable(models.Model):
    """One variable of a workspace: ``TF_VAR_<key>`` (terraform) or ``<key>`` (env) for its runs.

    A sensitive value is write-only and encrypted at rest (apps/workspaces/encryption.py): only
    ``encrypted_value`` holds it, and only the dispatch to the agent running a task decrypts it.
    """

    class Category(models.TextChoices):
        TERRAFORM = "terraform"
        ENV = "env"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="variables")
    key = models.CharField(max_length=100)
    category = models.CharField(max_length=10, choices=Category.choices, default=Category.TERRAFORM)
    sensitive = models.BooleanField(default=False)
    # The value of a non-sensitive variable; always empty for a sensitive one.
    value = models.TextField(blank=True)
    # The Fernet token of a sensitive variable's value; empty otherwise.
    encrypted_value = models.TextField(blank=True, editable=False)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = VariableQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "category", "key"], name="variable_unique_key"),
            # A sensitive value never sits in the clear column, and a plain one is never encrypted.
            models.CheckConstraint(
                condition=Q(sensitive=False, encrypted_value="") | Q(sensitive=True, value=""),
                name="variable_sensitive_encrypted",
            ),
        ]
        ordering = ["workspace", "category", "key"]

    def __str__(self) -> str:
        return "%s %s" % (self.category, self.key)

    @property
    def is_set(self) -> bool:
        return bool(self.encrypted_value) if self.sensitive else True
