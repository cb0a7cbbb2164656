"""``make chaos [ROUNDS=200] [SEED=n]``: random faults against a whole local cluster, invariants
checked after every round. Exits non-zero on any violation and prints the seed to replay it."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import django


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=Path(".data/chaos"))
    parser.add_argument("--webs", type=int, default=2)
    parser.add_argument("--leaders", type=int, default=3)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--workspaces", type=int, default=20)
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="put PgBouncer in front: DATABASE_URL through transaction pooling, DATABASE_SESSION_URL session pooling",
    )
    parser.add_argument(
        "--failover",
        action="store_true",
        help="a primary with a synchronous streaming standby behind a multi-host URL, and the failover fault",
    )
    parser.add_argument("--log-level", default="WARNING", help="of the harness itself; the cluster logs to files")
    args = parser.parse_args(argv[1:])
    if args.pgbouncer and args.failover:
        parser.error("--pgbouncer and --failover do not combine (PgBouncer has no target_session_attrs)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    workdir = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)

    from chaos.cluster import Cluster

    cluster = Cluster(
        workdir,
        webs=args.webs,
        leaders=args.leaders,
        agents=args.agents,
        pgbouncer=args.pgbouncer,
        failover=args.failover,
    )
    print("chaos: seed %d, %d rounds, logs in %s" % (seed, args.rounds, cluster.logdir), flush=True)
    try:
        return run(cluster, seed=seed, rounds=args.rounds, workspaces=args.workspaces, log_level=args.log_level)
    finally:
        cluster.close()


def run(cluster: object, *, seed: int, rounds: int, workspaces: int, log_level: str) -> int:
    from chaos.cluster import Cluster

    assert isinstance(cluster, Cluster)
    os.environ.update(
        DATABASE_URL=cluster.start_database(),
        SECRET_KEY="chaos-secret-not-for-production",
        POD_NAME="chaos-harness",
        PROCESS_ROLE="chaos",
        DJANGO_SETTINGS_MODULE="iacplatform.settings",
        # The harness prints its rounds; the cluster's processes log to files under the workdir.
        LOG_LEVEL=log_level,
    )
    django.setup()
    from django.core.management import call_command

    from chaos import invariants
    from chaos.load import Load, create_workspaces
    from chaos.runner import ELECTION_BOUND, TASK_BOUND, Runner, wait_for_leader, wait_until

    call_command("migrate", verbosity=0, interactive=False)
    if cluster.pgbouncer:
        cluster.start_pgbouncer()
        print("chaos: the cluster reaches PostgreSQL through PgBouncer on port %d" % cluster.pgbouncer_port, flush=True)
    token = "iacp_chaos_%d" % seed
    cluster.token_file.write_text(token + "\n")
    workspace_ids = create_workspaces(count=workspaces, token=token)
    started = time.time()
    cluster.start_all()
    if wait_for_leader(cluster, since=started, timeout=30) is None:
        print("chaos: no leader was elected at start; see %s" % cluster.logdir)
        return 2
    runner = Runner(cluster, seed=seed, out=lambda line: print(line, flush=True))
    load = Load(workspace_ids=workspace_ids, seed=seed)
    load.start()
    try:
        for number in range(1, rounds + 1):
            runner.round(number)
    finally:
        load.stop()
    # Drain: with the load stopped, every task must settle; then the final, strictest check.
    stuck = wait_until(lambda: invariants.tasks_not_terminal(created_before=_now_plus(1)), timeout=TASK_BOUND)
    final = runner.check_invariants(task_bound=0)
    if stuck:
        print("    drain: %d tasks still not terminal %.0fs after the load stopped" % (len(stuck), TASK_BOUND))
    for violation in final:
        runner.totals.violations[violation.split(":", 1)[0]].append("final: " + violation)
        print("    VIOLATION final: %s" % violation)
    print(runner.summary())
    print("\nload: %d tasks enqueued; election bound %.1fs" % (load.enqueued, ELECTION_BOUND))
    if runner.totals.violation_count:
        print(
            "\nchaos: %d violations. Replay: make chaos ROUNDS=%d SEED=%d"
            % (runner.totals.violation_count, rounds, seed)
        )
        return 1
    print("\nchaos: no violations (seed %d)" % seed)
    return 0


def _now_plus(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
