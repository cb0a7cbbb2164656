"""The channel layer itself, side by side in one run: the project's PostgreSQL layer (on the
benchmark's loop, as under daphne, where it runs on the server's loop; and on a thread of its own,
as for sync callers such as the leader), channels-postgres 1.1.4 (the published layer it
replaces), and channels-redis's RedisChannelLayer and RedisPubSubChannelLayer (Redis on
127.0.0.1:6379, benchmarks only).

Scenarios, each with 100 B and 10 KB message bodies, every layer in this one process and loop:
- one-way latency p50/p99 at 200 msg/s to one channel: arrival minus the *scheduled* send time,
  so a sender that falls behind counts against the layer (no coordinated omission);
- sustained ``send`` throughput to one channel: back-to-back sends while a receiver drains it;
- ``group_send`` throughput to a group of 10 channels, each drained by its own receiver.
Every message must arrive (checked); capacities are raised so that no layer refuses a send.
The machine is shared and its load drifts, so the layers take turns: ``ROUNDS`` rounds, each
running every scenario for every layer (the order rotating between rounds), and each line is the
median of its rounds.
Goals: the project layer's throughput at least channels-postgres's on every line; its p99 latency
within 3x RedisPubSubChannelLayer's. The goals are judged on the configuration the web replicas
run (the server's loop); the own-thread lines are shown with the same references, without a goal.

``python -m bench.bench_channel_layer`` (or ``make bench BENCH=bench_channel_layer``) writes
bench/results/ like every benchmark; DATABASE_URL must point at a migrated database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.report import Progress, Row
from harness.stats import percentile

BENCH = "channel_layer"
LAYERS = [
    ("project", "PostgreSQL layer (project)"),
    ("project_own", "PostgreSQL layer (project), own thread"),
    ("channels_postgres", "channels-postgres 1.1.4"),
    ("redis", "RedisChannelLayer"),
    ("redis_pubsub", "RedisPubSubChannelLayer"),
]
SIZES = [("100 B", 100), ("10 KB", 10_000)]
RATE = 200
LATENCY_SECONDS = 3.0
ROUNDS = 3
SENDS = {100: 1500, 10_000: 800}
GROUP_SENDS = {100: 400, 10_000: 200}
MEMBERS = 10
CAPACITY = 1_000_000
# The Redis of the channels-redis references: bench.run skips this benchmark, saying so, when none
# answers there.
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import override_settings

    # channels-postgres is not an installed app of the project: its tables exist only here.
    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "channels_postgres"]):
        call_command("migrate", "channels_postgres", verbosity=0)


async def _make(kind: str) -> Any:
    from django.conf import settings

    if kind in ("project", "project_own"):
        from apps.pglayer.core import PostgresChannelLayer
        from apps.pglayer.loopthread import treat_as_server_loop

        # The benchmark's loop runs for the whole run, as daphne's does for a web replica's life.
        treat_as_server_loop(asyncio.get_running_loop())
        return PostgresChannelLayer(
            prefix="bench", capacity=CAPACITY, event_loop="server" if kind == "project" else "own"
        )
    if kind == "channels_postgres":
        from channels_postgres.core import PostgresChannelLayer as ChannelsPostgresLayer

        return ChannelsPostgresLayer(**dict(settings.DATABASES["default"]))
    if kind == "redis":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[REDIS], capacity=CAPACITY, prefix="bench")
    from channels_redis.pubsub import RedisPubSubChannelLayer

    return RedisPubSubChannelLayer(hosts=[REDIS], prefix="bench")


async def _close(kind: str, layer: Any) -> None:
    with contextlib.suppress(Exception):
        await layer.flush()
    if kind in ("project", "project_own"):
        await layer.close()
    elif kind == "redis":
        await layer.close_pools()


async def _ready(layer: Any, channels: list[str], received: Callable[[], int]) -> None:
    """Until each receiver is subscribed (RedisPubSub drops what is published before that)."""
    for _ in range(400):
        for channel in channels:
            await layer.send(channel, {"type": "warm"})
        await asyncio.sleep(0.025)
        if received() >= len(channels):
            return
    raise RuntimeError("receivers never became ready")


class Drain:
    """Receivers on ``channels`` recording arrival time of each measured message."""

    def __init__(self, layer: Any, channels: list[str]) -> None:
        self.arrivals: list[tuple[float, float]] = []  # (scheduled or sent, arrived)
        self.warm: set[str] = set()
        self.tasks = [asyncio.ensure_future(self._run(layer, channel)) for channel in channels]

    async def _run(self, layer: Any, channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            if message["type"] == "warm":
                self.warm.add(channel)
                continue
            self.arrivals.append((message["t"], time.monotonic()))

    async def wait_for(self, total: int, *, within: float) -> None:
        deadline = time.monotonic() + within
        while len(self.arrivals) < total and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def latency(layer: Any, size: int) -> tuple[list[float], int]:
    channel = await layer.new_channel()
    drain = Drain(layer, [channel])
    await _ready(layer, [channel], lambda: len(drain.warm))
    count = int(RATE * LATENCY_SECONDS)
    start = time.monotonic() + 0.05
    pad = "x" * size
    for n in range(count):
        scheduled = start + n / RATE
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await layer.send(channel, {"type": "m", "t": scheduled, "pad": pad})
    await drain.wait_for(count, within=10)
    await drain.stop()
    return [(arrived - sent) * 1000 for sent, arrived in drain.arrivals], count - len(drain.arrivals)


async def send_throughput(layer: Any, size: int) -> tuple[float, int]:
    channel = await layer.new_channel()
    drain = Drain(layer, [channel])
    await _ready(layer, [channel], lambda: len(drain.warm))
    count = SENDS[size]
    pad = "x" * size
    started = time.monotonic()
    for _ in range(count):
        await layer.send(channel, {"type": "m", "t": time.monotonic(), "pad": pad})
    elapsed = time.monotonic() - started
    await drain.wait_for(count, within=30)
    await drain.stop()
    return count / elapsed, count - len(drain.arrivals)


async def group_send_throughput(layer: Any, size: int, group: str) -> tuple[float, int]:
    channels = [await layer.new_channel() for _ in range(MEMBERS)]
    for channel in channels:
        await layer.group_add(group, channel)
    drain = Drain(layer, channels)
    await _ready(layer, channels, lambda: len(drain.warm))
    count = GROUP_SENDS[size]
    pad = "x" * size
    started = time.monotonic()
    for _ in range(count):
        await layer.group_send(group, {"type": "m", "t": time.monotonic(), "pad": pad})
    elapsed = time.monotonic() - started
    await drain.wait_for(count * MEMBERS, within=30)
    await drain.stop()
    # No group_discard: channels-postgres's needs a database alias of its own; groups are per scenario.
    return count / elapsed, count * MEMBERS - len(drain.arrivals)


async def measure(progress: Progress) -> dict[tuple[str, str, str], float]:
    rounds: dict[tuple[str, str, str], list[float]] = {}

    def record(kind: str, metric: str, size_label: str, value: float) -> None:
        rounds.setdefault((kind, metric, size_label), []).append(value)

    layers = {kind: await _make(kind) for kind, _ in LAYERS}
    labels = dict(LAYERS)
    try:
        for number in range(ROUNDS):
            order = [kind for kind, _ in LAYERS]
            order = order[number % len(order) :] + order[: number % len(order)]
            for size_label, size in SIZES:
                for kind in order:
                    layer, label = layers[kind], "round %d/%d, %s" % (number + 1, ROUNDS, labels[kind])
                    progress.step("%s: latency %s" % (label, size_label))
                    samples, lost = await latency(layer, size)
                    record(kind, "p50 latency @%d msg/s" % RATE, size_label, percentile(samples, 50))
                    record(kind, "p99 latency @%d msg/s" % RATE, size_label, percentile(samples, 99))
                    record(kind, "lost", "latency " + size_label, lost)
                    progress.step("%s: send throughput %s" % (label, size_label))
                    rate, lost = await send_throughput(layer, size)
                    record(kind, "send throughput, one channel", size_label, rate)
                    record(kind, "lost", "send " + size_label, lost)
                    progress.step("%s: group_send throughput %s" % (label, size_label))
                    group = "bench-%s-%d-%d" % (kind, size, number)
                    rate, lost = await group_send_throughput(layer, size, group)
                    record(kind, "group_send throughput, %d channels" % MEMBERS, size_label, rate)
                    record(kind, "lost", "group_send " + size_label, lost)
    finally:
        for kind, layer in layers.items():
            await _close(kind, layer)
    return {key: (sum(values) if key[1] == "lost" else statistics.median(values)) for key, values in rounds.items()}


def rows(results: dict[tuple[str, str, str], float]) -> list[Row]:
    out: list[Row] = []
    labels = dict(LAYERS)
    for kind, label in LAYERS:
        for size_label, _ in SIZES:
            for metric, unit in (
                ("p50 latency @%d msg/s" % RATE, "ms"),
                ("p99 latency @%d msg/s" % RATE, "ms"),
                ("send throughput, one channel", "msg/s"),
                ("group_send throughput, %d channels" % MEMBERS, "group_sends/s"),
            ):
                value = results[(kind, metric, size_label)]
                goal, met, reference = "", None, ""
                if kind == "project" and metric.startswith("p99"):
                    reference = "redis_pubsub"
                    goal = "<= 3x RedisPubSubChannelLayer"
                    met = value <= 3 * results[(reference, metric, size_label)]
                elif kind == "project" and "throughput" in metric:
                    reference = "channels_postgres"
                    goal = ">= channels-postgres"
                    met = value >= results[(reference, metric, size_label)]
                elif kind == "project_own" and "throughput" in metric:
                    reference = "channels_postgres"
                elif metric.startswith("p"):
                    reference = "redis_pubsub"
                lost_key = metric.split(" ")[0] if "throughput" in metric else "latency"
                lost = int(results[(kind, "lost", "%s %s" % (lost_key, size_label))])
                if lost:
                    met = False if kind == "project" else met
                    goal = (goal + "; " if goal else "") + "%d lost" % lost
                out.append(
                    Row(
                        bench=BENCH,
                        scenario="%s, %s" % (label, size_label),
                        metric=metric,
                        unit=unit,
                        measured=value,
                        goal=goal or "-",
                        met=met,
                        reference=labels[reference] if reference else "",
                        reference_value=results[(reference, metric, size_label)] if reference else None,
                        extra={"lost": lost},
                    )
                )
    return out


def run(progress: Progress) -> list[Row]:
    _setup_django()
    return rows(asyncio.run(measure(progress)))


def main() -> int:
    from bench.run import main as run_main

    return run_main(["bench.run", "bench_channel_layer"])


if __name__ == "__main__":
    sys.exit(main())
