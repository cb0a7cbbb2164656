"""A whole local cluster for chaos rounds: its own PostgreSQL (harness/pg.py, so that it can be
restarted; with ``failover``, a primary and its standby), web replicas, runleader candidates and
agents, each a real process in its own process group (harness/processes.py), restarted after a
fault the way Kubernetes restarts a container.

Guarantees: every process started is killed at ``close()``; an agent's execution log is a new
file per incarnation, and the harness records when it killed an agent so that an execution cut
short has an end. Does NOT: isolate the network (faults are signals, backend terminations and a
database restart, not partitions).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.pg import PgServer, multi_host_url
from harness.pgbouncer import PgBouncer, find_binary, upstream
from harness.processes import Proc, daphne_argv, free_port, kill_all, launch, process_env, wait_http

logger = logging.getLogger(__name__)

# Short timings so a round takes seconds; the same code paths as production's defaults.
TIMINGS = {
    "LEADER_ELECTION_BACKEND": "postgres",
    "LEADER_ELECTION_LEASE_DURATION": "3",
    "LEADER_ELECTION_RENEW_DEADLINE": "2",
    "LEADER_ELECTION_RETRY_PERIOD": "0.5",
    "LEADER_JOB_STOP_GRACE": "2",
    "AGENT_HEARTBEAT_INTERVAL": "0.5",
    "AGENT_OFFLINE_THRESHOLD": "4",
    "AGENT_HELLO_TIMEOUT": "5",
    "AGENT_SHUTDOWN_GRACE": "5",
    "AGENT_RECONNECT_MAX_DELAY": "1",
    "TASK_DISPATCH_ACCEPT_TIMEOUT": "4",
    "JOB_PENDING_TASKS_EVERY": "1",
    "JOB_TASK_TIMEOUT_EVERY": "2",
    "JOB_AGENT_CLEANUP_EVERY": "1",
    "JOB_DRIFT_CHECK_EVERY": "2",
    "DB_CONN_MAX_AGE": "60",
    "LOG_LEVEL": "INFO",
}
LEASE_DURATION = float(TIMINGS["LEADER_ELECTION_LEASE_DURATION"])
RETRY_PERIOD = float(TIMINGS["LEADER_ELECTION_RETRY_PERIOD"])
AGENT_OFFLINE_THRESHOLD = float(TIMINGS["AGENT_OFFLINE_THRESHOLD"])


@dataclass
class Member:
    """One replica: a role, a stable name (its POD_NAME), and its current incarnation."""

    role: str  # web | leader | agent
    name: str
    port: int = 0  # web and leader (health) port; agents have none
    proc: Proc | None = None  # the current incarnation's process
    incarnation: int = 0
    stopped: bool = False  # SIGSTOPped right now
    execution_logs: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    @property
    def agent_id(self) -> str:
        return "%s-i%d" % (self.name, self.incarnation)


class Cluster:
    def __init__(
        self,
        workdir: Path,
        *,
        webs: int = 2,
        leaders: int = 3,
        agents: int = 4,
        pgbouncer: bool = False,
        failover: bool = False,
    ) -> None:
        self.workdir = workdir
        # PgBouncer mode: every process's DATABASE_URL goes through transaction pooling and its
        # DATABASE_SESSION_URL through session pooling (the harness itself talks to PostgreSQL).
        self.pgbouncer = pgbouncer
        # Failover mode: a primary and a synchronous streaming standby, reached through a
        # multi-host URL; the "failover" fault crashes the primary and promotes the standby.
        self.failover = failover
        self.primary: PgServer | None = None
        self.standby: PgServer | None = None
        self._rebuilding: threading.Thread | None = None
        self.bouncer: PgBouncer | None = None
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.db_url = ""
        self.token_file = workdir / "agent-token"
        self.members: list[Member] = (
            [Member("web", "web-%d" % i, port=free_port()) for i in range(1, webs + 1)]
            + [Member("leader", "leader-%d" % i, port=free_port()) for i in range(1, leaders + 1)]
            + [Member("agent", "agent-%d" % i) for i in range(1, agents + 1)]
        )
        # (agent_id, pid) -> time.time() when the harness killed that agent's process group.
        self.agent_deaths: dict[tuple[str, int], float] = {}

    # -- database -------------------------------------------------------------------------
    def start_database(self) -> str:
        if self.failover:
            return self._start_pair()
        from iacplatform.devdb import MAX_CONNECTIONS  # as many as a local cluster gets

        self.primary = PgServer(self.workdir, "pg")
        self.primary.init(conf={"max_connections": str(MAX_CONNECTIONS)})
        self.primary.start()
        self.primary.execute("CREATE DATABASE chaos")
        self.db_url = self.primary.url("chaos")
        return self.db_url

    def _start_pair(self) -> str:
        self.primary = PgServer(self.workdir, "pg-a")
        self.primary.init()
        self.primary.start()
        self.primary.execute("CREATE DATABASE chaos")
        self.standby = PgServer(self.workdir, "pg-b")
        self._attach_standby()
        self.db_url = multi_host_url([self.primary, self.standby], "chaos")
        return self.db_url

    def _attach_standby(self) -> None:
        """(Re)build the standby from the primary, then make the primary wait for it on commit:
        synchronous replication, so that a failover loses no committed transaction."""
        assert self.primary is not None and self.standby is not None
        import shutil

        shutil.rmtree(self.standby.dir, ignore_errors=True)
        self.standby.init_standby_of(self.primary)
        self.standby.start()
        self.standby.wait_ready()
        self.primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        self.primary.execute("SELECT pg_reload_conf()")

    def settle_database(self) -> None:
        """Wait for a standby rebuild still running (before the next database fault)."""
        if self._rebuilding is not None:
            self._rebuilding.join()
            self._rebuilding = None

    def fail_over(self) -> float:
        """Crash the primary, promote the standby; returns when the new primary takes writes
        (the old primary is rebuilt as the new standby in the background meanwhile)."""
        self.settle_database()
        assert self.primary is not None and self.standby is not None
        self.primary.stop("immediate")
        self.standby.promote()
        # Its copied configuration waits for a standby it does not have yet: not until one is attached.
        self.standby.execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        self.standby.execute("SELECT pg_reload_conf()")
        promoted = time.time()
        self.primary, self.standby = self.standby, self.primary
        self._rebuilding = threading.Thread(target=self._attach_standby, name="standby-rebuild", daemon=True)
        self._rebuilding.start()
        return promoted

    def start_pgbouncer(self) -> None:
        """PgBouncer (the Debian package) in front of the cluster's database, two pool modes."""
        from iacplatform.dburl import libpq_params

        binary = find_binary()
        if not binary:
            raise RuntimeError("chaos --pgbouncer needs PgBouncer: apt-get install pgbouncer")
        params = libpq_params(self.db_url)
        onto = upstream(
            host=params["host"],
            port=params.get("port", 5432),
            dbname=params["dbname"],
            user=params.get("user", "postgres"),
        )
        self.bouncer = PgBouncer(
            binary, onto, root=self.workdir / "pgbouncer", max_client_conn=1000, session_pool_size=60
        )
        self.bouncer.start()

    @property
    def pgbouncer_port(self) -> int:
        assert self.bouncer is not None
        return self.bouncer.port

    def pgbouncer_url(self, database: str) -> str:
        assert self.bouncer is not None
        return self.bouncer.url(database)

    def restart_database(self, *, down_for: float) -> float:
        """Stop PostgreSQL (fast: every session is cut), keep it down, start it; when it is back."""
        assert self.primary is not None
        self.settle_database()
        self.primary.stop("fast")
        time.sleep(down_for)
        self.primary.start()
        return time.time()

    def stop_database(self) -> None:
        with contextlib.suppress(Exception):
            self.settle_database()
        for server in (self.primary, self.standby):
            if server is not None and server.running():
                with contextlib.suppress(Exception):
                    server.stop("immediate")

    # -- processes ------------------------------------------------------------------------
    def by_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def web_ws_urls(self) -> list[str]:
        return ["ws://127.0.0.1:%d/ws/agents/" % m.port for m in self.by_role("web")]

    def live_web_pods(self) -> list[str]:
        return [m.name for m in self.by_role("web") if m.alive() and not m.stopped]

    def env(self, member: Member) -> dict[str, str]:
        extra = dict(TIMINGS)
        if self.pgbouncer and member.role != "agent":  # agents get no database (process_env)
            extra["DATABASE_SESSION_URL"] = self.pgbouncer_url("session")
        return process_env(
            pod=member.name,
            role=member.role,
            db_url=self.pgbouncer_url("pooled") if self.pgbouncer else self.db_url,
            secret_key="chaos-secret-not-for-production",
            extra=extra,
        )

    def argv(self, member: Member) -> list[str]:
        python = sys.executable
        if member.role == "web":
            return daphne_argv(member.port)
        if member.role == "leader":
            return [python, "manage.py", "runleader", "--http-addr", "127.0.0.1:%d" % member.port]
        log = self.workdir / "exec" / ("%s.jsonl" % member.agent_id)
        log.parent.mkdir(exist_ok=True)
        member.execution_logs.append(log)
        argv = [python, "manage.py", "runagent", "--agent-id", member.agent_id, "--token-file", str(self.token_file)]
        # One credential per agent id, kept across its incarnations (a volume in deploy/).
        argv += ["--credential-file", str(self.workdir / "credentials" / member.agent_id)]
        # Each agent starts at a different replica, as a Service would spread them.
        urls = self.web_ws_urls()
        offset = self.by_role("agent").index(member) % len(urls)
        for url in urls[offset:] + urls[:offset]:
            argv += ["--url", url]
        return [*argv, "--execution-log", str(log), "--work-dir", str(self.workdir / "work" / member.agent_id)]

    def start(self, member: Member) -> None:
        member.incarnation += 1
        member.stopped = False
        log_path = self.logdir / ("%s.log" % member.name)
        with log_path.open("ab") as log:
            log.write(b"\n===== incarnation %d =====\n" % member.incarnation)
        argv = self.argv(member)
        member.proc = launch(
            member.name, argv, env=self.env(member), log_path=log_path, port=member.port or None, append=True
        )

    def start_all(self) -> None:
        for member in self.by_role("web"):
            self.start(member)
        for member in self.by_role("web"):
            assert member.proc is not None
            wait_http(member.proc, "/healthz")
        for member in self.by_role("leader") + self.by_role("agent"):
            self.start(member)

    def signal(self, member: Member, sig: int) -> None:
        if not member.alive():
            return
        if sig == signal.SIGKILL and member.role == "agent":
            self.agent_deaths[(member.agent_id, member.pid)] = time.time()
        assert member.proc is not None
        member.proc.signal_group(sig)  # an agent's Terraform child shares its fate, as in a pod
        if sig == signal.SIGSTOP:
            member.stopped = True
        elif sig == signal.SIGCONT:
            member.stopped = False

    def terminate(self, member: Member, *, grace: float) -> None:
        """SIGTERM, then SIGKILL past ``grace`` (as the kubelet does)."""
        self.signal(member, signal.SIGTERM)
        assert member.proc is not None
        try:
            member.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.signal(member, signal.SIGKILL)
            member.proc.wait(10)

    def kill(self, member: Member) -> None:
        self.signal(member, signal.SIGKILL)
        if member.proc is not None:
            member.proc.wait(10)

    def restart_dead(self) -> list[str]:
        restarted = []
        for member in self.members:
            if member.proc is not None and not member.alive():
                self.start(member)
                restarted.append(member.name)
        return restarted

    def close(self) -> None:
        kill_all(member.proc for member in self.members if member.proc is not None)
        if self.bouncer is not None:
            self.bouncer.stop()
        self.stop_database()

    def execution_logs(self) -> list[Path]:
        return [log for member in self.by_role("agent") for log in member.execution_logs]
