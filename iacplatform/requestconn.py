"""Database connections of HTTP requests under daphne are closed when the request ends.

Django's ASGI handler runs each request's sync code (middleware, views) on a thread of its own
(asgiref's ThreadSensitiveContext: a new single-thread executor per request), and connections are
per thread. With ``CONN_MAX_AGE`` > 0 (kept for the consumers' shared thread and for runleader),
``close_old_connections`` at the request's end keeps the connection "for reuse" by a thread that
never serves again: it stayed open, idle, until the garbage collector found the thread's objects.
Measured (pg_stat_activity during bench_isolation's REST flood): one replica's idle connections
went 7 -> 33 in 7 s, growing with the request rate, towards the server's ``max_connections``.

:class:`CloseRequestConnections` (iacplatform/asgi.py, around Django's HTTP handler only) marks
the request's context; the ``request_finished`` receiver here, which Django runs on the request's
own thread, closes that thread's connections. Guarantees: a request served through daphne leaves
no connection open after it. Does NOT: pool connections (each request still opens one; Django's
psycopg pool would share them), or touch the consumers' shared thread, runleader, the test
client or runserver (none passes through the marked context).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from django.core import signals
from django.db import connections

from iacplatform.edge import ASGIApp, Scope

_per_request_thread: ContextVar[bool] = ContextVar("per_request_thread", default=False)


class CloseRequestConnections:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        token = _per_request_thread.set(True)
        try:
            await self.app(scope, receive, send)
        finally:
            _per_request_thread.reset(token)


def close_request_connections(**kwargs: Any) -> None:
    # Runs on the request's thread (Django sends request_finished from response.close() there),
    # whose context sync_to_async copied from the request's task: the mark is visible here.
    if _per_request_thread.get():
        for conn in connections.all(initialized_only=True):
            conn.close()


signals.request_finished.connect(close_request_connections, dispatch_uid="iacplatform.requestconn")
