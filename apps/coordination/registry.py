"""The registry of background jobs, discovered from ``apps/<app>/jobs.py`` like admin.py.

A job is a function taking a :class:`apps.coordination.fencing.Tick`; it is declared with
``@job(name=..., every=seconds)``. ``runleader`` runs each registered job in its own thread while
it leads. Guarantees: names are unique and their advisory-lock keys distinct (a clash raises at
import). Does NOT: run anything (see scheduler.py), or decide leadership.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.utils.module_loading import autodiscover_modules

from apps.coordination.lockkeys import Key, job_key

if TYPE_CHECKING:
    from apps.coordination.fencing import Tick

JobFunc = Callable[["Tick"], None]


@dataclass(frozen=True)
class JobSpec:
    name: str
    every: float
    func: JobFunc

    @property
    def lock_key(self) -> Key:
        return job_key(self.name)


_jobs: dict[str, JobSpec] = {}
_recovery: list[JobFunc] = []


def job(*, name: str, every: float) -> Callable[[JobFunc], JobFunc]:
    """Register ``func`` to run every ``every`` seconds on the leader, under its advisory lock."""

    def register(func: JobFunc) -> JobFunc:
        if every <= 0:
            raise ValueError("job %s: interval must be positive" % name)
        existing = _jobs.get(name)
        if existing is not None and existing.func is not func:
            raise ValueError("job %s is registered twice" % name)
        for other in _jobs.values():
            if other.name != name and other.lock_key == job_key(name):
                raise ValueError("jobs %s and %s share an advisory-lock key" % (name, other.name))
        _jobs[name] = JobSpec(name=name, every=every, func=func)
        return func

    return register


def on_leadership_acquired(func: JobFunc) -> JobFunc:
    """Register a one-off recovery pass run once at the start of every term, before the jobs."""
    if func not in _recovery:
        _recovery.append(func)
    return func


def autodiscover() -> None:
    autodiscover_modules("jobs")


def registered_jobs() -> list[JobSpec]:
    return sorted(_jobs.values(), key=lambda spec: spec.name)


def recovery_passes() -> list[JobFunc]:
    return list(_recovery)
