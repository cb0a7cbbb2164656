"""The one registry of PostgreSQL advisory-lock keys.

Every advisory lock the project takes is a two-int key ``(namespace, id)``: PostgreSQL shows it in
``pg_locks`` as ``classid = namespace, objid = id, objsubid = 2``, so :func:`decode` can name any
lock held in the cluster (the admin and ``clusterstatus`` use it). Guarantees: keys of different
namespaces never collide; a job's key is stable across processes and releases (CRC-32 of its name,
not Python's salted ``hash``). Does NOT: take locks (joblocks.py takes job locks on the session
path, the task queue a transaction lock); prevent two job names from sharing a CRC-32 (``job_key`` refuses such a pair
when both are registered, see registry.py).
"""

from __future__ import annotations

import zlib
from enum import IntEnum


class Namespace(IntEnum):
    # Values are arbitrary but fixed forever: they are visible in pg_locks of running clusters.
    WORKSPACE = 7101
    JOB = 7102
    LEADER_RECOVERY = 7103
    LEADER_BEACON = 7104
    # Transaction locks taken by the JobRun overlap trigger (migration 0007), keyed by hashtext(job):
    # two ticks of one job written at once are checked one after the other.
    JOBRUN_CHECK = 7105
    SOCKET_CAP = 7106


Key = tuple[int, int]


def workspace_key(workspace_id: int) -> Key:
    """Serialises choosing and dispatching the next task of one workspace."""
    return (Namespace.WORKSPACE, _int4(workspace_id))


def job_key(job_name: str) -> Key:
    """Held for the duration of one tick of a background job."""
    return (Namespace.JOB, _int4(zlib.crc32(job_name.encode("utf-8"))))


def beacon_key(lease: str, epoch: int, holder: str) -> Key:
    """Held by ``holder``, leader of one term of ``lease``, on its beacon session (beacon.py).

    The holder is part of the key: candidates racing for the same epoch light different beacons.
    """
    return (Namespace.LEADER_BEACON, _int4(zlib.crc32(("%s:%d:%s" % (lease, epoch, holder)).encode("utf-8"))))


def socket_cap_key(cap_key: str) -> Key:
    """Serialises counting and taking the slots of one connection-cap key (apps/sockets/slots.py).

    Two keys sharing a CRC-32 only serialise each other's connects; they are still counted apart.
    """
    return (Namespace.SOCKET_CAP, _int4(zlib.crc32(cap_key.encode("utf-8"))))


def pg_locks_key(key: Key) -> tuple[int, int]:
    """``key`` as pg_locks shows it: (classid, objid), unsigned oids."""
    return key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF


def _int4(value: int) -> int:
    # Both halves of a two-int advisory key are int4: fold into the signed 32-bit range.
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def decode(classid: int, objid: int, *, job_names: list[str] | None = None) -> str:
    """A human name for the two-int advisory lock ``(classid, objid)`` seen in pg_locks."""
    try:
        namespace = Namespace(classid)
    except ValueError:
        return "unknown(%d, %d)" % (classid, objid)
    if namespace is Namespace.JOB:
        for name in job_names or []:
            if job_key(name)[1] == objid:
                return "job:%s" % name
        return "job:#%d" % objid
    return "%s:%d" % (namespace.name.lower(), objid)
