"""The SQL of the channel layer: every operation is one statement on an autocommit connection.

Names in the tables are ``<prefix>:<name>``. A message is announced with ``pg_notify`` in the same
statement that stores it, so the announcement is sent at commit, after the row is visible. The
NOTIFY channel of a process-specific name (``...<client>!<suffix>``) is derived from the layer's
prefix and the ``<client>`` part (see :func:`process_notify_channel`, which must agree with
``_NOTIFY_TARGET``); every other name is announced on the layer's shared NOTIFY channel.

Payloads (``_PAYLOAD``): ``<name>`` for a shared name (its consumers compete by claiming);
``<name> <id> <base64 body>`` for a process-specific name whose body is at most
``INLINE_MAX_BODY`` bytes (delivered from the NOTIFY, see inline.py); ``<name> <id>`` for larger
ones (the owner claims it), so no payload reaches NOTIFY's 8000-byte limit. Claims announce
``sync <n>`` to the claiming process itself. Stored names contain no spaces (Channels' name rules).
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

INLINE_MAX_BODY = 5600  # base64 (+ line breaks) of this, a name and an id stay under 8000 bytes

_PAYLOAD = (
    "CASE WHEN strpos({col}, '!') = 0 THEN {col} "
    "WHEN octet_length({body}) <= "
    + str(INLINE_MAX_BODY)
    + " THEN {col} || ' ' || {id} || ' ' || encode({body}, 'base64') "
    "ELSE {col} || ' ' || {id} END"
)

# Capacity counts live rows only, and stops counting at the capacity.
_QUEUED = (
    "(SELECT count(*) FROM (SELECT 1 FROM " + MESSAGE_TABLE + " q WHERE q.channel = {col} AND q.expires > now() "
    "LIMIT %(capacity)s) AS queued)"
)

# Announce an inserted row (columns id, channel, body) to whoever receives its channel.
_ANNOUNCE_INSERTED = (
    "pg_notify("
    + _NOTIFY_TARGET.format(col="channel")
    + ", "
    + _PAYLOAD.format(col="channel", id="id", body="body")
    + ")"
)

SEND = (
    "WITH ins AS (INSERT INTO " + MESSAGE_TABLE + " (channel, body, expires) "
    "SELECT %(key)s, %(body)s, now() + make_interval(secs => %(expiry)s) "
    "WHERE " + _QUEUED.format(col="%(key)s") + " < %(capacity)s RETURNING id, channel, body) "
    "SELECT pg_notify(%(notify)s, " + _PAYLOAD.format(col="channel", id="id", body="body") + ") FROM ins"
)

GROUP_SEND = (
    "WITH members AS (SELECT g.channel, " + _QUEUED.format(col="g.channel") + " >= %(capacity)s AS is_full "
    "FROM " + MEMBERSHIP_TABLE + ' g WHERE g."group" = %(group)s AND g.expires > now()), '
    "ins AS (INSERT INTO " + MESSAGE_TABLE + " (channel, body, expires) "
    "SELECT channel, %(body)s, now() + make_interval(secs => %(expiry)s) FROM members WHERE NOT is_full "
    "ORDER BY channel RETURNING id, channel, body), "
    "notified AS (SELECT " + _ANNOUNCE_INSERTED + " FROM ins) "
    "SELECT (SELECT count(*) FROM notified), (SELECT count(*) FROM members WHERE is_full)"
)

# Claim: whoever deletes a row delivers it. Per requested name, the oldest rows up to its limit;
# SKIP LOCKED lets competing consumers of a shared name each take different rows without waiting.
# Expired rows are claimed too (and dropped by the caller): the cheap half of garbage collection.
# When it claimed anything, it also announces ``sync <n>`` to the claiming process (inline.py).
CLAIM = (
    "WITH d AS (DELETE FROM " + MESSAGE_TABLE + " WHERE id IN (SELECT m.id FROM "
    "unnest(%(keys)s::text[], %(limits)s::int[]) AS w(channel, n) CROSS JOIN LATERAL ("
    "SELECT id FROM " + MESSAGE_TABLE + " WHERE channel = w.channel ORDER BY id LIMIT w.n "
    "FOR UPDATE SKIP LOCKED) AS m) "
    "RETURNING id, channel, body, expires, expires > now() AS live), "
    "s AS (SELECT pg_notify(%(own)s, %(sync)s)) "
    "SELECT d.id, d.channel, d.body, d.expires, d.live, (SELECT count(*) FROM s) FROM d"
)

# The owner's delete of rows it delivered from their NOTIFY.
DELETE_DELIVERED = "DELETE FROM " + MESSAGE_TABLE + " WHERE id = ANY(%(ids)s::bigint[]) RETURNING id"

# Give claimed but undelivered rows back under their own ids, so their order is kept.
UNCLAIM = (
    "WITH ins AS (INSERT INTO " + MESSAGE_TABLE + " (id, channel, body, expires) "
    "SELECT * FROM unnest(%(ids)s::bigint[], %(keys)s::text[], %(bodies)s::bytea[], %(expires)s::timestamptz[]) "
    "ON CONFLICT (id) DO NOTHING RETURNING id, channel, body) "
    "SELECT " + _ANNOUNCE_INSERTED + " FROM ins"
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
