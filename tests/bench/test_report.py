from __future__ import annotations

from bench.report import Row, markdown


def test_ratio_and_table_show_the_reference_of_the_same_run() -> None:
    row = Row(
        bench="bench_x",
        scenario="100 B",
        metric="p99 latency",
        unit="ms",
        measured=6.0,
        goal="<= 3x ref",
        met=True,
        reference="RedisPubSub",
        reference_value=3.0,
    )
    assert row.ratio == 2.0
    table = markdown([row], title="t")
    assert "| bench_x | 100 B | p99 latency | 6.00 ms | RedisPubSub: 3.00 ms | 2.00x | <= 3x ref | yes |" in table
    assert Row(bench="b", scenario="s", metric="m", unit="", measured=1, goal="", met=None).ratio is None
