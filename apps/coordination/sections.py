"""The registry of ``clusterstatus`` sections, contributed by apps from ``apps/<app>/status.py``.

The coordination core reports the election and the jobs; everything about the domain (agents,
tasks, states) comes from the app that owns it, the way jobs do:

    @status_section(name="agents", title="Agents")
    def agents() -> dict[str, Any]: ...

    @agents.describe
    def _(data: dict[str, Any]) -> list[str]: ...   # the text lines, optional

``cluster_status()`` puts each section's result under its name; the text output prints each
section's lines (or ``title: value`` when it has no ``describe``). Guarantees: a section that
raises is reported as ``{"error": ...}`` under its name and the others still run; names are
unique (a clash raises at import). Does NOT: cache anything, or bound a section's cost (each
section keeps its own query cheap: it runs on every ``clusterstatus`` and admin view).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import autodiscover_modules

logger = logging.getLogger(__name__)

Collect = Callable[[], Any]
Describe = Callable[[Any], list[str]]


@dataclass
class Section:
    name: str
    title: str
    collect: Collect
    order: int = 100
    lines: Describe | None = field(default=None)

    def describe(self, func: Describe) -> Describe:
        """Register the function turning this section's data into text lines."""
        self.lines = func
        return func

    def text(self, data: Any) -> list[str]:
        if isinstance(data, dict) and set(data) == {"error"}:
            return ["%s: error: %s" % (self.title, data["error"])]
        if self.lines is None:
            return ["%s: %s" % (self.title, data)]
        return self.lines(data)


_sections: dict[str, Section] = {}


def status_section(*, name: str, title: str, order: int = 100) -> Callable[[Collect], Section]:
    """Register ``collect`` as the section ``name`` of ``clusterstatus`` (lower ``order`` first)."""

    def register(collect: Collect) -> Section:
        existing = _sections.get(name)
        if existing is not None and existing.collect is not collect:
            raise ValueError("status section %s is registered twice" % name)
        section = Section(name=name, title=title, collect=collect, order=order)
        _sections[name] = section
        return section

    return register


def autodiscover() -> None:
    autodiscover_modules("status")


def registered_sections() -> list[Section]:
    return sorted(_sections.values(), key=lambda section: (section.order, section.name))


def collect_sections() -> dict[str, Any]:
    """Each registered section's data by name; a failing section reports its error."""
    result: dict[str, Any] = {}
    for section in registered_sections():
        try:
            result[section.name] = section.collect()
        except Exception as exc:
            logger.exception("clusterstatus section %s failed", section.name)
            result[section.name] = {"error": "%s: %s" % (type(exc).__name__, exc)}
    return result
