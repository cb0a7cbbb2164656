"""``make bench``: run every benchmark under bench/ and write the results.

Each ``bench/bench_*.py`` exposes ``run(progress) -> list[Row]``. Results go to
``bench/results/<timestamp>.json`` (every row, with the machine it ran on) and a markdown table in
``bench/results/<timestamp>.md``, copied to ``bench/results/latest.md`` (linked from the README).
``python -m bench.run bench_handover`` runs only the named benchmarks.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.report import Progress, Row, markdown

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"


def discover(names: list[str]) -> list[str]:
    found = sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))
    if not names:
        return found
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise SystemExit("unknown benchmarks: %s (have: %s)" % (", ".join(unknown), ", ".join(found)))
    return [name for name in found if name in names]


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    modules = discover(argv[1:])
    progress = Progress()
    rows: list[Row] = []
    failures: list[str] = []
    started = time.monotonic()
    for index, name in enumerate(modules, start=1):
        progress.begin(name, index, len(modules))
        try:
            module = importlib.import_module("bench.%s" % name)
            produced = module.run(progress)
        except Exception:
            failures.append(name)
            progress.done("FAILED")
            traceback.print_exc()
            continue
        rows.extend(produced)
        progress.done("%d lines" % len(produced))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "started": stamp,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "failed": failures,
        "rows": [row.as_dict() for row in rows],
    }
    (RESULTS / ("%s.json" % stamp)).write_text(json.dumps(payload, indent=2))
    table = markdown(rows, title="Benchmarks, %s (%s CPUs)" % (stamp, os.cpu_count()))
    if failures:
        table += "\nFailed to run: %s\n" % ", ".join(failures)
    (RESULTS / ("%s.md" % stamp)).write_text(table)
    (RESULTS / "latest.md").write_text(table)
    print(table)
    print("written: bench/results/%s.json, bench/results/%s.md, bench/results/latest.md" % (stamp, stamp))
    missed = [row for row in rows if row.met is False]
    return 1 if failures or missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
