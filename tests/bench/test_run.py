"""`make bench BENCH=x` writes x's results aside (never over latest.md), keeps the noise of a
benchmark out of the progress line, and skips a benchmark whose Redis reference is absent."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from bench import run

NOISY = """
import logging, os, subprocess, sys
from bench.report import Row

def run(progress):
    progress.step("measuring")
    logger = logging.getLogger("bench.noisy")
    logger.addHandler(logging.StreamHandler())  # to sys.stderr, as a benchmark's own logging does
    logger.warning("a warning line from logging")
    os.write(2, b"a raw write to descriptor 2\\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('a child process on stderr\\\\n')"], check=True)
    return [Row(bench="noisy", scenario="s", metric="m", unit="ms", measured=1.0, goal="-", met=None)]
"""


@pytest.fixture
def bench_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "bench"
    (root / "results").mkdir(parents=True)
    (root / "results" / "latest.md").write_text("the committed table\n")
    monkeypatch.setattr(run, "BENCH_DIR", root)
    monkeypatch.setattr(run, "RESULTS", root / "results")
    monkeypatch.setattr(run, "PARTIAL", root / "results" / "partial")
    for name, source in (("bench_noisy", NOISY), ("bench_quiet", NOISY)):
        (root / ("%s.py" % name)).write_text(source)
        module = types.ModuleType("bench.%s" % name)
        exec(compile(source, name, "exec"), module.__dict__)  # noqa: S102 - the test's own source
        monkeypatch.setitem(sys.modules, "bench.%s" % name, module)
    return root


def test_a_named_run_writes_aside_and_leaves_latest_md_alone(
    bench_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run.main(["bench.run", "bench_noisy"]) == 0
    results = bench_dir / "results"
    assert (results / "latest.md").read_text() == "the committed table\n"
    assert sorted(p.name for p in results.iterdir()) == ["latest.md", "partial"]
    written = sorted(p.suffix for p in (results / "partial").iterdir())
    assert written == [".json", ".log", ".md"]
    (table,) = (results / "partial").glob("*.md")
    assert "only bench_noisy" in table.read_text()


def test_a_full_run_is_the_record_that_replaces_latest_md(bench_dir: Path) -> None:
    assert run.main(["bench.run"]) == 0
    latest = (bench_dir / "results" / "latest.md").read_text()
    assert "| noisy |" in latest and "only" not in latest


def test_the_noise_goes_to_the_log_and_the_progress_line_stays_clean(
    bench_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run.main(["bench.run", "bench_noisy"])
    err = capfd.readouterr().err
    for noise in ("a warning line from logging", "a raw write to descriptor 2", "a child process on stderr"):
        assert noise not in err
    assert "[1/1] bench_noisy: 1 lines" in err
    (log,) = (bench_dir / "results" / "partial").glob("*.log")
    text = log.read_text()
    for noise in ("a warning line from logging", "a raw write to descriptor 2", "a child process on stderr"):
        assert noise in text


def test_a_benchmark_whose_redis_is_absent_is_skipped_with_a_clear_line(
    bench_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules["bench.bench_quiet"], "REDIS", "redis://127.0.0.1:1/0", raising=False)
    assert run.main(["bench.run", "bench_noisy", "bench_quiet"]) == 0
    captured = capfd.readouterr()
    assert "bench_quiet: skipped: needs Redis at redis://127.0.0.1:1/0" in captured.err
    assert "Skipped bench_quiet: needs Redis" in captured.out
