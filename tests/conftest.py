from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.fixtures import fakekube, pgbouncer, pgcluster, pgpair, processes  # noqa: F401  (fixtures)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    # Lets fixtures see whether the test failed (processes prints its logs then).
    report = yield
    setattr(item, "rep_" + report.when, report)  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session", autouse=True)
def close_channel_layers(django_db_setup: None) -> Iterator[None]:
    # Postgres channel layers made in this process keep connections to the test database; close
    # them before pytest-django drops it (set up after django_db_setup, so torn down before it).
    yield
    from apps.coordination.joblocks import close_process_job_locks
    from apps.pglayer.core import close_all_layers

    close_all_layers()
    close_process_job_locks()


@pytest.fixture(autouse=True)
def _fresh_socket_caps() -> Iterator[None]:
    # In-process consumers that a test leaves without a disconnect would hold their slots; each
    # test is a fresh replica, without the refresher thread (its steps are tested directly, and
    # its connection would outlive the test database).
    from iacplatform import sockets

    sockets.caps.background = False
    sockets.caps.reset()
    sockets.connect_rate.buckets.clear()
    yield
    sockets.caps.reset()
    sockets.connect_rate.buckets.clear()
