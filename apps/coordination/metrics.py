"""Prometheus metrics of runleader: election state (read at scrape time) and job ticks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from apps.coordination.elector import LeaderElector

REGISTRY = CollectorRegistry(auto_describe=True)

TICKS = Counter(
    "iacplatform_job_ticks", "Job ticks by outcome (ok, error, fenced, skipped).", ["job", "outcome"], registry=REGISTRY
)
FENCED = Counter(
    "iacplatform_job_fenced_ticks",
    "Ticks that did not run: lock held elsewhere or epoch stale.",
    ["job"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "iacplatform_job_tick_duration_seconds",
    "Duration of job ticks.",
    ["job"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)


def observe_tick(job: str, outcome: str, seconds: float) -> None:
    TICKS.labels(job=job, outcome=outcome).inc()
    DURATION.labels(job=job).observe(seconds)
    if outcome in ("fenced", "skipped"):
        FENCED.labels(job=job).inc()


class ElectorCollector(Collector):
    """Reads the elector when scraped, so the renew age is current, not as of the last event."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector

    def collect(self) -> Iterator[GaugeMetricFamily]:
        elector = self.elector
        labels = ["lease", "backend"]
        values = [elector.lock.name, elector.lock.backend]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        observed = elector.state.observed
        yield gauge("iacplatform_leader_is_leader", "1 while this process leads.", 1.0 if elector.is_leader() else 0.0)
        yield gauge(
            "iacplatform_leader_epoch",
            "Fencing epoch of the current term (timeline << 32 + count), -1 if none.",
            elector.epoch if elector.epoch is not None else -1,
        )
        yield gauge(
            "iacplatform_leader_lease_transitions",
            "leaseTransitions of the record as last observed.",
            observed.record.lease_transitions if observed else 0,
        )
        yield gauge("iacplatform_leader_terms", "Terms this process has led.", elector.state.terms)
        last_error = elector.state.last_error
        family = GaugeMetricFamily(
            "iacplatform_leader_last_error",
            "1 while the last attempt failed, labelled with the reason (Forbidden, Unreachable, ...).",
            labels=[*labels, "reason"],
        )
        family.add_metric([*values, last_error.reason if last_error else ""], 1.0 if last_error else 0.0)
        yield family
        yield gauge(
            "iacplatform_leader_failing_seconds",
            "Seconds every attempt has failed (0 while they succeed).",
            elector.failing_for(),
        )
        age = elector.renew_age()
        yield gauge(
            "iacplatform_leader_renew_age_seconds",
            "Seconds since the last successful renew, -1 if never.",
            age if age is not None else -1,
        )


def register_elector(elector: LeaderElector) -> ElectorCollector:
    collector = ElectorCollector(elector)
    REGISTRY.register(collector)
    return collector
