from __future__ import annotations

import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values_s: Sequence[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (
        f"p50 {percentile(ms, 50):.1f} ms  p95 {percentile(ms, 95):.1f} ms  "
        f"p99 {percentile(ms, 99):.1f} ms  max {max(ms):.1f} ms  mean {statistics.fmean(ms):.1f} ms"
    )
