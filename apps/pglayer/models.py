"""The tables of the Postgres channel layer (apps/pglayer/core.py).

The layer reads and writes them with psycopg directly (one statement per operation, see
statements.py); the models exist for the migrations, the admin and the garbage-collection job.
Channel and group names are stored with the layer's prefix (``<prefix>:<name>``), so that two
layers configured with different prefixes never see each other's rows.
"""

from __future__ import annotations

from django.db import models


class Message(models.Model):
    """One message waiting in a channel: stored before it is announced, deleted when received.

    Whoever deletes the row (``DELETE ... RETURNING``) delivers it, so a message is handed out at
    most once however many processes race for it. ``id`` orders a channel's messages.
    """

    id = models.BigAutoField(primary_key=True)
    channel = models.TextField()
    body = models.BinaryField()
    expires = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["channel", "id"], name="pglayer_msg_channel_id"),
            models.Index(fields=["expires"], name="pglayer_msg_expires"),
        ]

    def __str__(self) -> str:
        return "message %d on %s" % (self.id, self.channel)


class GroupMembership(models.Model):
    """A channel in a group until it is discarded or ``expires`` (refreshed by every group_add)."""

    id = models.BigAutoField(primary_key=True)
    group = models.TextField()
    channel = models.TextField()
    expires = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "channel"], name="pglayer_membership_unique")]
        indexes = [models.Index(fields=["expires"], name="pglayer_membership_expires")]

    def __str__(self) -> str:
        return "%s in %s" % (self.channel, self.group)
