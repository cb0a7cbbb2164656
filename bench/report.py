"""Benchmark results: one row per measured line, compared with a reference measured in the same run.

Every benchmark module under bench/ exposes ``run(progress: Progress) -> list[Row]``; bench/run.py
runs them all and writes ``bench/results/<timestamp>.json`` and ``.md`` plus ``latest.md``.
Ratios, not absolute numbers, are what the goals are judged by: these machines are shared and noisy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TextIO


@dataclass
class Row:
    bench: str
    scenario: str
    metric: str  # e.g. "p99 latency", "throughput"
    unit: str  # "ms", "msg/s", "s"
    measured: float
    goal: str  # human-readable goal, e.g. "<= 3x RedisPubSub" or "< 1000 ms"
    met: bool | None  # None: the line has no pass/fail goal of its own (a reference line)
    reference: str = ""  # name of the reference measured in the same run
    reference_value: float | None = None
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference_value in (None, 0) or self.reference_value is None:
            return None
        return self.measured / self.reference_value

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


class Progress:
    """A one-line progress display on stderr: which benchmark, which step, elapsed time."""

    def __init__(self, *, stream: TextIO | None = None) -> None:
        self.stream: TextIO = stream or sys.stderr
        self.started = time.monotonic()
        self.bench = ""

    def begin(self, bench: str, index: int, total: int) -> None:
        self.bench = "[%d/%d] %s" % (index, total, bench)
        self.step("starting")

    def step(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write("\r\033[K%6.1fs %s: %s" % (elapsed, self.bench, message))
        self.stream.flush()

    def done(self, message: str) -> None:
        self.step(message)
        self.stream.write("\n")


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if abs(value) >= 100:
        text = "%.0f" % value
    elif abs(value) >= 10:
        text = "%.1f" % value
    else:
        text = "%.2f" % value
    return "%s %s" % (text, unit) if unit else text


def markdown(rows: list[Row], *, title: str) -> str:
    lines = [
        "# %s" % title,
        "",
        "| benchmark | scenario | metric | measured | reference (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reference = "%s: %s" % (row.reference, fmt(row.reference_value, row.unit)) if row.reference else "-"
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        ratio = fmt(row.ratio) + "x" if row.ratio is not None else "-"
        lines.append(
            "| %s | %s | %s | %s | %s | %s | %s | %s |"
            % (row.bench, row.scenario, row.metric, fmt(row.measured, row.unit), reference, ratio, row.goal, met)
        )
    return "\n".join(lines) + "\n"
