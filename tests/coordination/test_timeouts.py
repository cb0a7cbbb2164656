"""Job and fence transactions bound their statements (SET LOCAL statement_timeout) and leak
nothing into the session (a transaction pooler hands the server connection to others after)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import OperationalError, connection

from apps.coordination.clock import SYSTEM_CLOCK
from apps.coordination.fencing import Tick, raise_epoch
from apps.coordination.models import Fence, JobRun
from apps.coordination.registry import JobSpec
from apps.coordination.scheduler import Term, TermContext, run_tick
from iacplatform.sessiondb import django_connection_params
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.django_db(transaction=True)


def ctx(*, statement_timeout: float, stop: threading.Event | None = None) -> TermContext:
    return TermContext(
        lease="lease",
        holder="me",
        epoch=1,
        is_leader=lambda: True,
        stop=stop or threading.Event(),
        clock=FakeClock(),
        statement_timeout=statement_timeout,
        idle_in_transaction_timeout=5.0,
    )


def session_settings() -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')"
        )
        row = cursor.fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_fenced_statement_is_cancelled_after_the_job_statement_timeout_and_nothing_leaks() -> None:
    raise_epoch(name="lease", epoch=1, holder="me")
    before = session_settings()
    seen: list[tuple[str, str]] = []

    def slow(tick: Tick) -> None:
        with tick.fenced():
            seen.append(session_settings())
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(5)")

    started = time.monotonic()
    assert run_tick(JobSpec(name="slow", every=60, func=slow), ctx(statement_timeout=0.3)) == "error"
    assert time.monotonic() - started < 3
    assert seen == [("300ms", "5s")]
    assert "canceling statement due to statement timeout" in JobRun.objects.get(job="slow").error
    assert session_settings() == before


def test_raising_the_fence_is_bounded_and_a_term_retries_it_until_the_row_is_free() -> None:
    raise_epoch(name="lease", epoch=0, holder="old")
    with psycopg.connect(**django_connection_params()) as blocker:
        # A tick of the previous term still inside its fenced transaction holds the row FOR SHARE.
        blocker.execute("SELECT epoch FROM coordination_fence WHERE name = 'lease' FOR SHARE")
        started = time.monotonic()
        with pytest.raises(OperationalError, match="statement timeout"):
            raise_epoch(name="lease", epoch=1, holder="me", statement_timeout=0.2)
        assert time.monotonic() - started < 2
        ran = threading.Event()
        stop = threading.Event()
        context = ctx(statement_timeout=0.2, stop=stop)
        context.clock = SYSTEM_CLOCK  # the job thread waits its 60 s for real (stop ends it)
        term = Term(ctx=context, jobs=[JobSpec(name="j", every=60, func=lambda t: ran.set())], recovery=[], grace=5)
        thread = threading.Thread(target=term.run)
        thread.start()
        time.sleep(1.0)
        assert not ran.is_set()
        blocker.rollback()
    try:
        assert ran.wait(10), "the term raised the fence once the old tick let go, and ran its job"
        assert Fence.objects.get(name="lease").epoch == 1
    finally:
        stop.set()
        thread.join(10)
