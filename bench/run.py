"""``make bench``: run every benchmark under bench/ and write the results.

Each ``bench/bench_*.py`` exposes ``run(progress) -> list[Row]``. A full run (no names) is the
record: ``bench/results/<timestamp>.json`` (every row, with the machine it ran on, git-ignored), a
markdown table in ``bench/results/<timestamp>.md``, copied to ``bench/results/latest.md`` (linked
from the README), both meant to be committed. ``python -m bench.run bench_handover`` runs only the
named benchmarks and writes its JSON and table under ``bench/results/partial/`` (git-ignored): it
never replaces latest.md with a part of the picture.

While a benchmark runs, everything written to stderr (log lines, warnings, the output of the
processes it starts) goes to a log file beside the results, so that the progress line stays one
line; a benchmark that fails prints its traceback from there. A benchmark whose module sets
``REDIS`` (the URL of its Redis reference) is skipped, with a line saying so, when no Redis
answers there.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TextIO

from bench.report import Progress, Row, markdown

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
PARTIAL = RESULTS / "partial"


def discover(names: list[str]) -> list[str]:
    found = sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))
    if not names:
        return found
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise SystemExit("unknown benchmarks: %s (have: %s)" % (", ".join(unknown), ", ".join(found)))
    return [name for name in found if name in names]


def redis_missing(module: ModuleType) -> str | None:
    """Why the module's Redis reference cannot be measured, or None (no Redis needed, or it answers)."""
    url = getattr(module, "REDIS", None)
    if not url:
        return None
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return "needs Redis at %s for its reference (%s); start redis-server or set REDIS_URL" % (url, exc)
    return None


@contextlib.contextmanager
def stderr_to(log: TextIO) -> Iterator[None]:
    """Send file descriptor 2 (and sys.stderr, and so logging and warnings) to ``log``: child
    processes inherit it too."""
    sys.stderr.flush()
    saved = os.dup(2)
    saved_stream = sys.stderr
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    try:
        yield
    finally:
        log.flush()
        sys.stderr = saved_stream
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    names = argv[1:]
    modules = discover(names)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = PARTIAL if names else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / (stamp if not names else "%s-%s" % (stamp, "-".join(modules)))
    log_path = base.with_suffix(".log")
    # The progress line goes to the terminal, through a descriptor of its own.
    terminal = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0), write_through=True)
    progress = Progress(stream=terminal)
    rows: list[Row] = []
    failures: list[str] = []
    skipped: dict[str, str] = {}
    started = time.monotonic()
    with log_path.open("w") as log:
        for index, name in enumerate(modules, start=1):
            progress.begin(name, index, len(modules))
            log.write("===== %s =====\n" % name)
            log.flush()
            try:
                with stderr_to(log):
                    module = importlib.import_module("bench.%s" % name)
                    reason = redis_missing(module)
                    produced = [] if reason else module.run(progress)
            except Exception:
                failures.append(name)
                progress.done("FAILED (traceback in %s)" % _shown(log_path))
                log.write(traceback.format_exc())
                terminal.write(traceback.format_exc())
                continue
            if reason:
                skipped[name] = reason
                progress.done("skipped: %s" % reason)
                continue
            rows.extend(produced)
            progress.done("%d lines" % len(produced))
    payload = {
        "started": stamp,
        "benchmarks": modules,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "failed": failures,
        "skipped": skipped,
        "rows": [row.as_dict() for row in rows],
    }
    written = [base.with_suffix(".json"), base.with_suffix(".md")]
    written[0].write_text(json.dumps(payload, indent=2))
    title = "Benchmarks, %s (%s CPUs)" % (stamp, os.cpu_count())
    table = markdown(rows, title=title if not names else title + ", only " + ", ".join(modules))
    if failures:
        table += "\nFailed to run: %s\n" % ", ".join(failures)
    for name, reason in skipped.items():
        table += "\nSkipped %s: %s\n" % (name, reason)
    written[1].write_text(table)
    if not names:
        (RESULTS / "latest.md").write_text(table)
        written.append(RESULTS / "latest.md")
    print(table)
    print("written: %s (log: %s)" % (", ".join(_shown(p) for p in written), _shown(log_path)))
    missed = [row for row in rows if row.met is False]
    return 1 if failures or missed else 0


def _shown(path: Path) -> str:
    return str(path.relative_to(BENCH_DIR.parent))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
