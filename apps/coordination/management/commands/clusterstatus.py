"""``manage.py clusterstatus [--json]``: the lease, locks, ticks and the apps' sections at a glance."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.coordination import registry, sections
from apps.coordination.status import cluster_status


class Command(BaseCommand):
    help = "Show the leader lease, advisory locks, latest job ticks, overlaps and the apps' sections (agents, tasks)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        registry.autodiscover()  # job names decode the job locks
        status = cluster_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, indent=2, sort_keys=True))
            return
        lease = status["lease"]
        self.stdout.write("Lease %s/%s (%s)" % (lease["namespace"], lease["name"], lease.get("backend", "?")))
        if "error" in lease:
            self.stdout.write("  error: %s" % lease["error"])
        elif not lease.get("exists"):
            self.stdout.write("  not created yet")
        else:
            self.stdout.write(
                "  holder %s, epoch %s, renewed %ss ago, fence epoch %s"
                % (lease["holder"] or "(nobody)", lease["epoch"], lease["renew_age_seconds"], lease["fence_epoch"])
            )
        self.stdout.write("Advisory locks:")
        for lock in status["advisory_locks"] or [{"name": "(none)"}]:
            if lock["name"] == "(none)":
                self.stdout.write("  (none)")
                continue
            self.stdout.write(
                "  %-32s %-8s pid %-7s %-28s since %s"
                % (
                    lock["name"],
                    "held" if lock["granted"] else "waiting",
                    lock["pid"],
                    lock["application_name"],
                    lock["since"],
                )
            )
        self.stdout.write("Latest ticks:")
        for tick in status["latest_ticks"]:
            if tick["outcome"] is None:
                self.stdout.write("  %-24s never ran" % tick["job"])
                continue
            self.stdout.write(
                "  %-24s %-8s by %s (epoch %s) at %s, %ss"
                % (
                    tick["job"],
                    tick["outcome"],
                    tick["holder"],
                    tick["epoch"],
                    tick["started_at"],
                    tick["duration_seconds"],
                )
            )
        overlaps, ever = status["overlapping_ticks"], status["overlapping_ticks_ever"]
        self.stdout.write(
            "Overlapping ticks: %d in the ticks kept, %d ever%s"
            % (overlaps, ever, "" if overlaps == 0 and ever == 0 else "  <-- MUST BE 0")
        )
        self.stdout.write("Tick history (kept ticks + daily aggregates):")
        for job, h in status["tick_history"].items():
            self.stdout.write(
                "  %-24s %d ticks (%d ok, %d error, %d fenced, %d skipped), longest %.3fs, since %s"
                % (
                    job,
                    h["ticks"],
                    h["ok"],
                    h["error"],
                    h["fenced"],
                    h["skipped"],
                    h["max_duration_seconds"],
                    h["first_day"] or h["kept_since"],
                )
            )
        for section in sections.registered_sections():
            for line in section.text(status[section.name]):
                self.stdout.write(line)
