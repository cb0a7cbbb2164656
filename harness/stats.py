"""Percentiles for measurements (benchmarks, chaos rounds): one definition for all of them.

Guaranteed: linear interpolation between the closest ranks (as numpy's default), NaN for no
values. NOT: weighted samples or streaming estimates; the values are sorted in memory.
"""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
