"""Cross-replica delivery of UI events: ``group_send`` in one process -> a WebSocket client of a
daphne replica in another, over each channel layer, measured side by side in one run.

For each layer (the project's PostgreSQL layer, channels-redis's RedisChannelLayer and
RedisPubSubChannelLayer as the references; Redis on 127.0.0.1:6379, benchmarks only):
- a daphne replica ("B") started with ``CHANNEL_LAYER_BACKEND`` set to that layer, holding the
  WebSocket of an editing session (``ws/sessions/<id>/``, the socket takeover events reach);
- a sender process ("A", the same settings, as a web replica's ``on_commit`` would) that
  ``group_send``s ``session.<id>`` messages on a fixed schedule;
- the client here, which timestamps each frame on arrival.
Latency is arrival minus the *scheduled* send time (so a sender that falls behind counts against
the layer, no coordinated omission); all three processes share the machine's monotonic clock.
p50/p99 at 200 msg/s, then rates doubling from 400 msg/s and two bisection steps after the first
failure: the highest rate whose p99 stays under 100 ms with nothing lost. Goal: the project
layer's p99 at 200 msg/s within 2x RedisPubSub's and under 50 ms.

``python -m bench.bench_hub_delivery`` (or ``make bench BENCH=bench_hub_delivery``) writes
bench/results/ like every benchmark; DATABASE_URL must point at a migrated database.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import Progress, Row
from harness.stats import percentile

BENCH = "hub_delivery"
BACKENDS = [("postgres", "PostgreSQL layer (project)"), ("redis", "RedisChannelLayer"), ("redis_pubsub", "RedisPubSub")]
REFERENCE = "redis_pubsub"
# Where the replicas' channels-redis layers connect (settings' REDIS_URL and its default): bench.run
# skips this benchmark, saying so, when no Redis answers there.
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BASE_RATE = 200
BASE_SECONDS = 5.0
RAMP_SECONDS = 2.0
RAMP_RATES = [400, 800, 1600, 3200, 6400]
BISECTIONS = 2
P99_LIMIT_MS = 100.0
GRACE = 2.0  # seconds after the last scheduled send before a message counts as lost
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Level:
    rate: int
    sent: int
    latencies_ms: list[float]

    @property
    def lost(self) -> int:
        return self.sent - len(self.latencies_ms)

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def holds(self) -> bool:
        return self.lost == 0 and self.p(99) < P99_LIMIT_MS


# --- the sender process ---------------------------------------------------------------------------


async def _send_level(layer: Any, group: str, level: int, rate: int, count: int) -> int:
    start = time.monotonic() + 0.05
    for n in range(count):
        scheduled = start + n / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        event = {"type": "bench.ping", "level": level, "n": n, "scheduled": scheduled}
        await layer.group_send(group, {"type": "hub.event", "event": event})
    return count


async def _sender(group: str) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        level, rate, count = (int(x) for x in line.split())
        sent = await _send_level(layer, group, level, rate, count)
        print("sent %d" % sent, flush=True)


def sender_main(group: str) -> None:
    import django

    django.setup()
    asyncio.run(_sender(group))


# --- the measuring side ---------------------------------------------------------------------------


class Sender:
    def __init__(self, env: dict[str, str], group: str, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_hub_delivery", "--sender", group],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the sender exited (%s)" % self.proc.poll())
        return line

    def start(self, level: int, rate: int, count: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("%d %d %d\n" % (level, rate, count))
        self.proc.stdin.flush()

    def wait_sent(self) -> None:
        self._line()

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _measure(ws: Any, sender: Sender, level: int, rate: int, count: int) -> Level:
    latencies: list[float] = []
    await asyncio.to_thread(sender.start, level, rate, count)
    done = asyncio.ensure_future(asyncio.to_thread(sender.wait_sent))
    deadline: float | None = None
    while len(latencies) < count:
        if deadline is None and done.done():
            deadline = time.monotonic() + GRACE
        timeout = 0.2 if deadline is None else deadline - time.monotonic()
        if timeout <= 0:
            break
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout)
        except TimeoutError:
            continue
        arrived = time.monotonic()
        event = json.loads(raw)
        if event.get("type") == "bench.ping" and event["level"] == level:
            latencies.append((arrived - event["scheduled"]) * 1000.0)
    await done
    return Level(rate=rate, sent=count, latencies_ms=latencies)


async def _measure_backend(
    url: str, cookie: str, origin: str, sender: Sender, progress: Progress, name: str
) -> list[Level]:
    import websockets
    from websockets.typing import Origin

    levels: list[Level] = []
    async with websockets.connect(url, origin=Origin(origin), additional_headers={"Cookie": cookie}, proxy=None) as ws:
        state = json.loads(await ws.recv())
        if state.get("type") != "session.state":
            raise RuntimeError("unexpected first frame %r" % state)
        progress.step("%s: warm-up" % name)
        await _measure(ws, sender, 0, 100, 100)
        progress.step("%s: %d msg/s" % (name, BASE_RATE))
        levels.append(await _measure(ws, sender, 1, BASE_RATE, int(BASE_RATE * BASE_SECONDS)))
        # Doubling until a rate fails, then two bisection steps between the last that held and it.
        held = BASE_RATE if levels[0].holds else 0
        failed: int | None = None
        for rate in RAMP_RATES:
            if not held:
                break
            progress.step("%s: %d msg/s" % (name, rate))
            levels.append(await _measure(ws, sender, len(levels) + 1, rate, int(rate * RAMP_SECONDS)))
            if not levels[-1].holds:
                failed = rate
                break
            held = rate
        for _ in range(BISECTIONS if failed else 0):
            rate = (held + failed) // 2  # type: ignore[operator]
            progress.step("%s: %d msg/s" % (name, rate))
            levels.append(await _measure(ws, sender, len(levels) + 1, rate, int(rate * RAMP_SECONDS)))
            if levels[-1].holds:
                held = rate
            else:
                failed = rate
    return levels


def _fixture() -> tuple[str, str]:
    """A bench user, a workspace and an editing session; returns (session_id, cookie header)."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    from apps.access.actions import do_grant_role
    from apps.access.models import Role
    from apps.agents.models import AgentPool
    from apps.hub.actions import do_close_session, do_open_session
    from apps.workspaces.models import Workspace

    user, _ = User.objects.get_or_create(username="bench-hub")
    pool = AgentPool.objects.filter(name="bench-hub").first()
    if pool is None:
        pool = AgentPool(name="bench-hub")
        pool.set_new_token()
        pool.save()
    workspace, _ = Workspace.objects.get_or_create(name="bench-hub", defaults={"pool": pool})
    do_grant_role(actor=None, workspace=workspace, user=user, role=Role.WRITE)  # editing needs write
    for old in user.editing_sessions.filter(active=True):
        do_close_session(user=user, session_id=old.session_id)
    session = do_open_session(user=user, workspace=workspace, resource_address="bench.resource")
    client = Client()
    client.force_login(user)
    cookie = "%s=%s" % (settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value)
    return str(session.session_id), cookie


def run(progress: Progress, backends: list[tuple[str, str]] | None = None) -> list[Row]:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    django.setup()
    from django.conf import settings

    from harness.processes import ProcessGroup

    session_id, cookie = _fixture()
    results: dict[str, list[Level]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        for backend, name in backends or BACKENDS:
            group = ProcessGroup(Path(tmp), os.environ["DATABASE_URL"], secret_key=settings.SECRET_KEY)
            extra = {"CHANNEL_LAYER_BACKEND": backend, "SECRET_KEY": settings.SECRET_KEY, "LOG_LEVEL": "WARNING"}
            sender: Sender | None = None
            try:
                progress.step("%s: starting daphne" % name)
                replica = group.daphne("web-b-%s" % backend, env=extra)
                sender = Sender(
                    group.env("web-a-%s" % backend, "web", extra),
                    "session.%s" % session_id,
                    Path(tmp) / ("sender-%s.log" % backend),
                )
                url = "%s/ws/sessions/%s/" % (replica.ws_url, session_id)
                results[backend] = asyncio.run(_measure_backend(url, cookie, replica.url, sender, progress, name))
            except Exception:
                sys.stderr.write(group.logs() + "\n")
                raise
            finally:
                if sender is not None:
                    sender.stop()
                group.stop_all()
    return _rows(results, dict(backends or BACKENDS))


def _max_rate(levels: list[Level]) -> float:
    holding = [level.rate for level in levels if level.holds]
    return float(max(holding)) if holding else 0.0


def _rows(results: dict[str, list[Level]], names: dict[str, str]) -> list[Row]:
    rows: list[Row] = []
    reference = results.get(REFERENCE)
    ref_p50 = reference[0].p(50) if reference else None
    ref_p99 = reference[0].p(99) if reference else None
    for backend, levels in results.items():
        base = levels[0]
        extra: dict[str, float | int | str] = {
            "sent": base.sent,
            "lost": base.lost,
            "max_ms": max(base.latencies_ms, default=float("nan")),
        }
        ramp: dict[str, float | int | str] = {
            "levels": json.dumps([[lv.rate, round(lv.p(99), 1), lv.lost] for lv in levels])
        }
        is_project = backend == "postgres"
        ref_name = names.get(REFERENCE, REFERENCE) if reference and backend != REFERENCE else ""
        p99 = base.p(99)
        rows.append(
            Row(
                BENCH,
                names[backend],
                "p50 latency @%d msg/s" % BASE_RATE,
                "ms",
                base.p(50),
                "-",
                None,
                ref_name,
                ref_p50 if ref_name else None,
                extra,
            )
        )
        met = None
        goal = "-"
        if is_project:
            goal = "<= 2x RedisPubSub and < 50 ms"
            met = base.lost == 0 and p99 < 50.0 and (ref_p99 is not None and p99 <= 2 * ref_p99)
        rows.append(
            Row(
                BENCH,
                names[backend],
                "p99 latency @%d msg/s" % BASE_RATE,
                "ms",
                p99,
                goal,
                met,
                ref_name,
                ref_p99 if ref_name else None,
                extra,
            )
        )
        ref_max = _max_rate(reference) if reference else None
        rows.append(
            Row(
                BENCH,
                names[backend],
                "max rate with p99 < %d ms, none lost" % P99_LIMIT_MS,
                "msg/s",
                _max_rate(levels),
                "-",
                None,
                ref_name,
                ref_max if ref_name else None,
                ramp,
            )
        )
    return rows


def main() -> int:
    from bench.run import main as run_main

    return run_main(["bench.run", "bench_hub_delivery"])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sender":
        sender_main(sys.argv[2])
    else:
        sys.exit(main())
