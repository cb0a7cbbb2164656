"""The cross-replica record of open WebSockets that the connection caps count (slots.py).

A :class:`SocketReplica` is one running web process (not one pod: a restarted pod is a new
process, so a crashed process's slots never come back to life under its successor); it renews
``seen_at`` every ``SOCKET_CAP_REFRESH_SECONDS``. An :class:`OpenSocket` is one cap key of one
open socket (a socket under a user cap and a source cap has two rows). Rows of a replica whose
``seen_at`` is older than ``SOCKET_CAP_STALE_SECONDS`` are not counted and are swept.
All times are the database's clock, never a replica's.
"""

from __future__ import annotations

from django.db import models


class SocketReplica(models.Model):
    process = models.UUIDField(primary_key=True)
    pod = models.CharField(max_length=253)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["seen_at"], name="sockets_replica_seen_idx")]

    def __str__(self) -> str:
        return "%s (%s)" % (self.pod, self.process)


class OpenSocket(models.Model):
    class Kind(models.TextChoices):
        AGENT = "agent"
        HUB = "hub"

    socket = models.UUIDField()
    key = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # No foreign key: a row whose replica is gone simply stops counting (the count joins on a live
    # replica), and the sweep never needs a cascade.
    replica = models.UUIDField()
    opened_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["socket", "key"], name="sockets_opensocket_once")]
        indexes = [
            # The count of one key (connect), and the rows of one replica (recovery, sweep).
            models.Index(fields=["key", "replica"], name="sockets_opensocket_key_idx"),
            models.Index(fields=["replica"], name="sockets_opensocket_replica_idx"),
        ]

    def __str__(self) -> str:
        return "%s %s" % (self.kind, self.key)
