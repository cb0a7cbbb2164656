from __future__ import annotations

from apps.coordination.lockkeys import Namespace, decode, job_key, workspace_key


def test_keys_are_two_int4s_in_their_namespace() -> None:
    for key in (workspace_key(2**40 + 5), job_key("drift_check"), job_key("x" * 500)):
        assert len(key) == 2
        assert all(-(2**31) <= part < 2**31 for part in key)
    assert workspace_key(12)[0] == Namespace.WORKSPACE


def test_job_keys_are_stable_across_processes() -> None:
    # CRC-32, not Python's per-process salted hash(): every replica must compute the same key.
    assert job_key("drift_check") == (Namespace.JOB, -2145285596)


def test_decode_names_locks_seen_in_pg_locks() -> None:
    assert decode(*workspace_key(42)) == "workspace:42"
    assert decode(*job_key("cmdb_sync"), job_names=["drift_check", "cmdb_sync"]) == "job:cmdb_sync"
    assert decode(1, 2) == "unknown(1, 2)"
