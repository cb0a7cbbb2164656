"""``manage.py runleader``: campaign for the lease and, while leading, run the background jobs."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.coordination.elector import ConfigError, ElectionConfig
from apps.coordination.health import parse_addr
from apps.coordination.leader import LeaderOptions, LeaderProcess
from apps.coordination.leaselock import BACKENDS
from iacplatform.sessioncheck import startup_problem


class Command(BaseCommand):
    help = "Leader election and background jobs. Options override the LEADER_* environment settings."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--identity", help="holder identity (default POD_NAME)")
        parser.add_argument("--backend", choices=BACKENDS, help="lease backend (default LEADER_ELECTION_BACKEND)")
        parser.add_argument("--lease-name")
        parser.add_argument("--namespace")
        parser.add_argument("--lease-duration", type=float)
        parser.add_argument("--renew-deadline", type=float)
        parser.add_argument("--retry-period", type=float)
        parser.add_argument("--grace", type=float, help="seconds jobs get to stop after a term ends")
        parser.add_argument("--http-addr", help="HOST:PORT for /healthz and /metrics ('' disables)")

    def handle(self, *args: Any, **opts: Any) -> None:
        def pick(key: str, default: Any) -> Any:
            return default if opts.get(key) is None else opts[key]

        try:
            config = ElectionConfig(
                lease_duration=pick("lease_duration", settings.LEADER_ELECTION_LEASE_DURATION),
                renew_deadline=pick("renew_deadline", settings.LEADER_ELECTION_RENEW_DEADLINE),
                retry_period=pick("retry_period", settings.LEADER_ELECTION_RETRY_PERIOD),
            )
            http_addr = pick("http_addr", settings.LEADER_HTTP_ADDR)
            if http_addr:
                parse_addr(http_addr)
        except (ConfigError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        grace = pick("grace", settings.LEADER_JOB_STOP_GRACE)
        if grace <= 0:
            raise CommandError("--grace must be positive, got %s" % grace)
        options = LeaderOptions(
            identity=pick("identity", settings.POD_NAME),
            backend=pick("backend", settings.LEADER_ELECTION_BACKEND),
            lease_name=pick("lease_name", settings.LEADER_ELECTION_LEASE_NAME),
            namespace=pick("namespace", settings.LEADER_ELECTION_NAMESPACE),
            config=config,
            grace=grace,
            http_addr=http_addr or None,
            extra_job_modules=tuple(settings.LEADER_EXTRA_JOB_MODULES),
            statement_timeout=settings.JOB_STATEMENT_TIMEOUT,
        )
        # Job locks and the election's LISTEN need a session of their own: refuse a transaction pooler;
        # and a server refusing either URL outright (a wrong password, no such database).
        problem = startup_problem(purpose="leader-start")
        if problem is not None:
            raise CommandError(problem)
        try:
            process = LeaderProcess(options)
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc

        stopping = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            # Only a flag: the main loop stops the jobs, then releases the lease.
            stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        code = process.run(stopping)
        if code != 0:
            raise SystemExit(code)
