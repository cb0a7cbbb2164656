"""The SQL of the channel layer: every operation is one statement on an autocommit connection.

Names in the tables are ``<prefix>:<name>``. A message is announced with ``pg_notify`` in the same
statement that stores it, so the announcement is sent at commit, after the row is visible. The
NOTIFY channel of a process-specific name (``...<client>!<suffix>``) is derived from the layer's
prefix and the ``<client>`` part (see :func:`process_notify_channel`, which must agree with
``_NOTIFY_TARGET``); every other name is announced on the layer's shared NOTIFY channel. Payloads
are the stored name only (at most ~200 bytes), never the body, so no message meets NOTIFY's
8000-byte limit.
"""

from __future__ import annotations

import hashlib

MESSAGE_TABLE = "pglayer_message"
MEMBERSHIP_TABLE = "pglayer_groupmembership"


def client_part(key: str) -> str:
    """The owning process's part of a process-specific stored name: between the last '.' and '!'."""
    return key.split("!", 1)[0].rsplit(".", 1)[-1]


def process_notify_channel(prefix: str, client: str) -> str:
    return "pgl_" + hashlib.sha256(("%s/%s" % (prefix, client)).encode("utf-8")).hexdigest()[:40]


def shared_notify_channel(prefix: str) -> str:
    return "pgl_" + hashlib.sha256(("%s/shared" % prefix).encode("utf-8")).hexdigest()[:40]


# The SQL twin of process_notify_channel / shared_notify_channel for a stored name column.
_NOTIFY_TARGET = (
    "CASE WHEN strpos({col}, '!') > 0 THEN 'pgl_' || left(encode(sha256(convert_to("
    "%(prefix)s || '/' || regexp_replace(split_part({col}, '!', 1), '^.*\\.', ''), 'UTF8')), 'hex'), 40) "
    "ELSE %(shared)s END"
)

# Capacity counts live rows only, and stops counting at the capacity.
_QUEUED = (
    "(SELECT count(*) FROM (SELECT 1 FROM " + MESSAGE_TABLE + " q WHERE q.channel = {col} AND q.expires > now() "
    "LIMIT %(capacity)s) AS queued)"
)

SEND = (
    "WITH ins AS (INSERT INTO " + MESSAGE_TABLE + " (channel, body, expires) "
    "SELECT %(key)s, %(body)s, now() + make_interval(secs => %(expiry)s) "
    "WHERE " + _QUEUED.format(col="%(key)s") + " < %(capacity)s RETURNING channel) "
    "SELECT pg_notify(%(notify)s, channel) FROM ins"
)

GROUP_SEND = (
    "WITH members AS (SELECT g.channel, " + _QUEUED.format(col="g.channel") + " >= %(capacity)s AS is_full "
    "FROM " + MEMBERSHIP_TABLE + ' g WHERE g."group" = %(group)s AND g.expires > now()), '
    "ins AS (INSERT INTO " + MESSAGE_TABLE + " (channel, body, expires) "
    "SELECT channel, %(body)s, now() + make_interval(secs => %(expiry)s) FROM members WHERE NOT is_full "
    "ORDER BY channel RETURNING channel), "
    "notified AS (SELECT pg_notify(" + _NOTIFY_TARGET.format(col="channel") + ", channel) FROM ins) "
    "SELECT (SELECT count(*) FROM notified), (SELECT count(*) FROM members WHERE is_full)"
)

# Claim: whoever deletes a row delivers it. Per requested name, the oldest rows up to its limit;
# SKIP LOCKED lets competing consumers of a shared name each take different rows without waiting.
# Expired rows are claimed too (and dropped by the caller): the cheap half of garbage collection.
CLAIM = (
    "DELETE FROM " + MESSAGE_TABLE + " WHERE id IN (SELECT m.id FROM "
    "unnest(%(keys)s::text[], %(limits)s::int[]) AS w(channel, n) CROSS JOIN LATERAL ("
    "SELECT id FROM " + MESSAGE_TABLE + " WHERE channel = w.channel ORDER BY id LIMIT w.n "
    "FOR UPDATE SKIP LOCKED) AS m) "
    "RETURNING id, channel, body, expires, expires > now()"
)

# Give claimed but undelivered rows back under their own ids, so their order is kept.
UNCLAIM = (
    "WITH ins AS (INSERT INTO " + MESSAGE_TABLE + " (id, channel, body, expires) "
    "SELECT * FROM unnest(%(ids)s::bigint[], %(keys)s::text[], %(bodies)s::bytea[], %(expires)s::timestamptz[]) "
    "ON CONFLICT (id) DO NOTHING RETURNING channel) "
    "SELECT pg_notify(" + _NOTIFY_TARGET.format(col="channel") + ", channel) FROM (SELECT DISTINCT channel FROM ins) c"
)

GROUP_ADD = (
    "INSERT INTO " + MEMBERSHIP_TABLE + ' ("group", channel, expires) '
    "VALUES (%(group)s, %(key)s, now() + make_interval(secs => %(group_expiry)s)) "
    'ON CONFLICT ("group", channel) DO UPDATE SET expires = EXCLUDED.expires'
)

GROUP_DISCARD = "DELETE FROM " + MEMBERSHIP_TABLE + ' WHERE "group" = %(group)s AND channel = %(key)s'

FLUSH_MESSAGES = "DELETE FROM " + MESSAGE_TABLE + " WHERE starts_with(channel, %(start)s)"
FLUSH_GROUPS = "DELETE FROM " + MEMBERSHIP_TABLE + ' WHERE starts_with("group", %(start)s)'

# Garbage collection, in batches that use the expiry indexes and skip rows being claimed.
DELETE_EXPIRED_MESSAGES = (
    "DELETE FROM " + MESSAGE_TABLE + " WHERE id IN (SELECT id FROM " + MESSAGE_TABLE + " WHERE expires < %(now)s "
    "ORDER BY expires LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)
DELETE_EXPIRED_MEMBERSHIPS = (
    "DELETE FROM " + MEMBERSHIP_TABLE + " WHERE id IN (SELECT id FROM " + MEMBERSHIP_TABLE + " WHERE expires < %(now)s "
    "ORDER BY expires LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)
