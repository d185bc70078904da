"""Percentiles of pooled samples and medians with min–max over repetitions."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

PCTS = (50, 90, 99, 99.9)


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """Linear interpolation between closest ranks; None for no samples."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = (n - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, n - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def latency_ms(values_ns: Iterable[int]) -> dict:
    """p50/p90/p99/p99.9/max in ms and the sample count of pooled per-token latencies."""
    ordered = sorted(values_ns)
    out = {f"p{p:g}": _ms(percentile(ordered, p)) for p in PCTS}
    out["max"] = _ms(ordered[-1]) if ordered else None
    out["n"] = len(ordered)
    return out


CURVE_PCTS = [i / 2 for i in range(0, 200)] + [99.5, 99.9, 100.0]


def curve_ms(values_ns: Iterable[int]) -> list[float]:
    """The distribution at CURVE_PCTS (0.5 % steps, then p99.5, p99.9, max) in ms, for charts."""
    ordered = sorted(values_ns)
    return [round(percentile(ordered, p) / 1e6, 4) for p in CURVE_PCTS] if ordered else []


def spread(values: Iterable[float | None], digits: int = 3) -> dict | None:
    """Median, min and max of per-repetition values (None values skipped)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": round(statistics.median(vals), digits), "min": round(min(vals), digits),
            "max": round(max(vals), digits), "n": len(vals)}


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 4)
