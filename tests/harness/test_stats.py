from __future__ import annotations

import math

from harness.stats import percentile


def test_percentile_interpolates_and_handles_edges() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == 99.01
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
