from __future__ import annotations

from django.db import models


class Lease(models.Model):
    """The Postgres lease backend's record: the same shape as a coordination.k8s.io/v1 Lease.

    Writers compare-and-set on resource_version; the one whose UPDATE matches no row lost the race.
    """

    name = models.CharField(max_length=253, unique=True)
    holder_identity = models.CharField(max_length=253, blank=True)
    lease_duration_seconds = models.PositiveIntegerField(default=15)
    acquire_time = models.DateTimeField(null=True, blank=True)
    renew_time = models.DateTimeField(null=True, blank=True)
    lease_transitions = models.PositiveIntegerField(default=0)
    # The fencing epoch of the holder's term (see fencing.py); null for rows written before it.
    epoch = models.BigIntegerField(null=True, blank=True)
    resource_version = models.BigIntegerField(default=1)

    def __str__(self) -> str:
        return "%s (held by %s)" % (self.name, self.holder_identity or "nobody")


class Fence(models.Model):
    """The fencing token of a lease: the epoch of the newest term. It only ever increases.

    Job transactions lock this row FOR SHARE and compare the epoch with their own; a new leader
    raising the epoch waits for them, and every tick of the old term that starts later sees the
    new epoch and writes nothing.
    """

    name = models.CharField(max_length=253, unique=True)
    epoch = models.BigIntegerField(default=0)
    # The PostgreSQL timeline the epoch was raised on: after a promotion (a new timeline) no tick
    # passes until a term raises the fence again, so raises lost with the old primary cannot
    # let a stale term through.
    timeline = models.BigIntegerField(default=0)
    holder_identity = models.CharField(max_length=253, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(epoch__gte=0), name="fence_epoch_non_negative")]

    def __str__(self) -> str:
        return "%s epoch %d" % (self.name, self.epoch)


class JobRun(models.Model):
    """One tick of one background job, recorded so overlap between holders can be checked."""

    class Outcome(models.TextChoices):
        RUNNING = "running"
        OK = "ok"
        ERROR = "error"
        FENCED = "fenced"
        SKIPPED = "skipped"

    job = models.CharField(max_length=100)
    holder = models.CharField(max_length=253)
    epoch = models.BigIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.RUNNING)
    error = models.TextField(blank=True)
    # Set by the database (the trigger of migration 0007, overlaps.py) as the row is written or
    # closed: this tick started while an earlier tick of its job ran. Never set by hand.
    overlapped = models.BooleanField(default=False, db_default=False, editable=False)
    # The latest end of the ticks of this job that started before this one (trigger-maintained):
    # the next tick compares its start with it, one row back, instead of walking the history.
    prior_end = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        indexes = [
            # Start order per job, ties by id: the overlap check's window and latest_ticks walk it;
            # covering the end and outcome, the walk reads the index only (once vacuumed).
            models.Index(
                fields=["job", "started_at", "id"], name="jobrun_job_start_order", include=["finished_at", "outcome"]
            ),
            models.Index(fields=["started_at"]),
            models.Index(fields=["epoch", "holder", "started_at"], name="jobrun_term"),
            # Ticks running now: a handful, read by every term start, the prune and clusterstatus.
            models.Index(fields=["job"], condition=models.Q(outcome="running"), name="jobrun_running"),
            # Overlapping ticks: none, or a handful to investigate; counted by clusterstatus and /metrics.
            models.Index(fields=["job"], condition=models.Q(overlapped=True), name="jobrun_overlapped"),
        ]
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return "%s by %s (epoch %d): %s" % (self.job, self.holder, self.epoch, self.outcome)


class JobRunDay(models.Model):
    """What the ticks of one job on one UTC day were, once they are older than the retention window.

    Written only by the ``jobrun_retention`` job, in the same statement that deletes the ticks it
    counts (apps/coordination/retention.py), so every tick is counted exactly once. ``last_end`` is
    the latest end of a tick that ran (not skipped) among the ticks folded in so far: the overlap
    check of the ticks kept starts from it, so an overlap across the window's edge is still found.
    """

    job = models.CharField(max_length=100)
    day = models.DateField()
    ticks = models.PositiveIntegerField(default=0)
    ok = models.PositiveIntegerField(default=0)
    error = models.PositiveIntegerField(default=0)
    fenced = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    total_duration_seconds = models.FloatField(default=0.0)
    max_duration_seconds = models.FloatField(default=0.0)
    overlapped = models.PositiveIntegerField(default=0)
    first_started_at = models.DateTimeField(null=True, blank=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_end = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "day"], name="jobrunday_unique_job_day")]
        ordering = ["-day", "job"]
        verbose_name = "job run day"

    def __str__(self) -> str:
        return "%s on %s: %d ticks" % (self.job, self.day, self.ticks)


class AdvisoryLock(models.Model):
    """An advisory lock held or awaited right now: a read-only view on pg_locks and pg_stat_activity.

    Only two-int keys (objsubid = 2) of the current database; ``namespace`` and ``key`` are the two
    ints as the project wrote them (signed), so ``lockkeys.decode`` names them.
    """

    id = models.CharField(max_length=100, primary_key=True)
    pid = models.IntegerField()
    namespace = models.BigIntegerField()
    key = models.BigIntegerField()
    mode = models.CharField(max_length=40)
    granted = models.BooleanField()
    application_name = models.CharField(max_length=200)
    state = models.CharField(max_length=40, null=True)
    backend_start = models.DateTimeField(null=True)
    xact_start = models.DateTimeField(null=True)
    query_start = models.DateTimeField(null=True)
    # PostgreSQL does not record when a lock was granted; only when a waiter started waiting.
    waiting_since = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = "coordination_advisorylock"
        ordering = ["namespace", "key", "-granted"]

    def __str__(self) -> str:
        return "%s held by %s (pid %d)" % (self.name, self.application_name, self.pid)

    @property
    def name(self) -> str:
        """The decoded name; job locks are named after the jobs registered in this process (the
        callers that show names, clusterstatus and the admin, discover the jobs first)."""
        from apps.coordination.lockkeys import decode
        from apps.coordination.registry import registered_jobs

        return decode(self.namespace, self.key, job_names=[spec.name for spec in registered_jobs()])
