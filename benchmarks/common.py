"""What every benchmark shares: percentiles and the table row that puts a figure beside its
baseline. Benchmarks print Markdown tables; read the ratio, not the absolute times."""

from __future__ import annotations

import statistics


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median_and_p99(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f} / {percentile(samples, 0.99):.2f}"


def ratio(ours: list[float], base: list[float]) -> float:
    return statistics.median(ours) / statistics.median(base)
