"""runleader's HTTP endpoints: ``/healthz`` (a watchdog) and ``/metrics`` (Prometheus).

``/healthz`` fails (503) when the process believes it leads but has not renewed within the lease
duration plus a tolerance, like client-go's HealthzAdaptor; when jobs did not stop after a lost
term; when it leads but its term cannot run jobs (``jobs_blocked``: the fence is ahead, for longer
than a lease); or when every attempt has failed for ``ElectionConfig.unhealthy_after`` (4 x
LeaseDuration, 60 s at the defaults) with an answer retrying cannot change (403, 401, 400, 422: a
Role without ``update``, a revoked token). The body always names the last error. A standby is
healthy: not leading is a normal state, and so is an unreachable or overloaded API server (5xx,
429, refused connections): restarting every replica for an outage would help nobody. It also
fails when the process's own database sessions are wrong (``problems``, selfcheck.py: a NOTIFY
the database accepted never came back over its LISTEN, a job lock held by a session not its
own); a database that does not answer is not judged, for the same reason.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apps.coordination.elector import LeaderElector
from apps.coordination.metrics import REGISTRY

logger = logging.getLogger(__name__)


def health(
    elector: LeaderElector,
    *,
    tolerance: float,
    failed: Callable[[], bool],
    jobs_blocked: Callable[[], float] = lambda: 0.0,
    problems: Callable[[], list[str]] = list,
) -> tuple[bool, dict[str, object]]:
    age = elector.renew_age()
    last_error = elector.state.last_error
    failing = elector.failing_for()
    body: dict[str, object] = {
        "identity": elector.identity,
        "lease": elector.lock.describe(),
        "leading": elector.is_leader(),
        "holder": elector.holder(),
        "epoch": elector.epoch,
        "renew_age": None if age is None else round(age, 3),
        "last_error": str(last_error) if last_error is not None else None,
        "failing_for": round(failing, 3),
    }
    blocked = jobs_blocked()
    # Its own database sessions (selfcheck.py): notifications lost, job locks on another session.
    session = problems()
    ok = True
    if failed():
        ok = False
        body["error"] = "jobs did not stop after the term ended"
    elif elector.state.leading and (age is None or age > elector.config.lease_duration + tolerance):
        ok = False
        body["error"] = "leading but not renewed for %.1fs" % (age or 0.0)
    elif elector.is_leader() and blocked > elector.config.lease_duration:
        ok = False
        body["error"] = "leading but running no jobs for %.1fs (fence ahead of the term)" % blocked
    elif session:
        ok = False
        body["error"] = "; ".join(session)
    elif last_error is not None and not last_error.transient and failing > elector.config.unhealthy_after:
        ok = False
        body["error"] = "every attempt failing for %.1fs: %s" % (failing, last_error)
    body["status"] = "ok" if ok else "unhealthy"
    return ok, body


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("--http-addr must be HOST:PORT or :PORT, got %r" % addr)
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - probes come from the kubelet


class HealthServer:
    def __init__(
        self,
        addr: str,
        elector: LeaderElector,
        *,
        tolerance: float = 2.0,
        failed: Callable[[], bool] = lambda: False,
        jobs_blocked: Callable[[], float] = lambda: 0.0,
        problems: Callable[[], list[str]] = list,
    ) -> None:
        host, port = parse_addr(addr)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/healthz":
                    ok, body = health(
                        outer.elector,
                        tolerance=outer.tolerance,
                        failed=outer.failed,
                        jobs_blocked=outer.jobs_blocked,
                        problems=outer.problems,
                    )
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif self.path.split("?")[0] == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("http: %s", format % args)

        self.elector = elector
        self.tolerance = tolerance
        self.failed = failed
        self.jobs_blocked = jobs_blocked
        self.problems = problems
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
