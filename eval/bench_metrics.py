"""Metrics of the vector-store benchmark: recall@k, latency percentiles, cliff detection.

Recall@k follows ann-benchmarks: a returned id counts when it is one of the exact top ``k``,
or when its exact score ties the k-th exact score (within ``eps``), so that a store
returning another of several equidistant neighbours is not penalised. The denominator is
the number of true neighbours that exist (fewer than ``k`` when a filter matches fewer
rows); returning fewer than that many hits counts the missing ones as misses.

Percentiles interpolate linearly between order statistics (numpy's default), over every
measured query.

A cliff is a step between two neighbouring sizes where a metric grows at least ``factor``
times faster than its expected scaling (``(n2/n1) ** exponent``: exponent 1 for build time,
memory and exact-scan latency, 0.5 for IVF query latency (its lists grow with sqrt(N)), 0
for HNSW, whose expected growth is logarithmic). :func:`find_cliffs` only detects; ``bench_report`` attaches the
explanation from what is known about each engine.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from eval import metrics

PERCENTILES = (50, 95, 99)


def fmt_n(n: float) -> str:
    """A vector count as the benchmark names sizes: 10k, 100k, 1M, 2.5M (1500 is 1.5k)."""
    if n >= 1e6:
        return f"{n / 1e6:g}M"
    if n >= 1e3:
        return f"{n / 1e3:g}k"
    return f"{n:g}"


def recall_at_k(
    found: Sequence[int],
    truth: Sequence[int],
    k: int,
    *,
    found_scores: Sequence[float] | None = None,
    truth_scores: Sequence[float] | None = None,
    eps: float = 1e-5,
) -> float:
    """Recall of ``found`` (row ids, best first) against exact ``truth`` (row ids best first,
    ``-1`` padding past the end of a small or filtered set).

    With ``found_scores`` (the exact scores of the found rows) and ``truth_scores``, a found
    row outside the true top ``k`` whose score is within ``eps`` of the k-th true score counts
    too (a tie). A query with no true neighbour at all has recall 1.0.
    """
    if k < 1:
        raise ValueError("k must be positive")
    relevant = [int(t) for t in list(truth)[:k] if int(t) >= 0]
    if not relevant:
        return 1.0
    want = len(relevant)
    seen: set[int] = set()
    hits = 0
    relevant_set = set(relevant)
    threshold = None
    if found_scores is not None and truth_scores is not None:
        threshold = float(truth_scores[want - 1]) - eps
    for pos, row in enumerate(list(found)[:k]):
        row = int(row)
        if row in seen:
            continue
        seen.add(row)
        if row in relevant_set or (
            threshold is not None and found_scores is not None and found_scores[pos] >= threshold
        ):
            hits += 1
    return min(hits, want) / want


def mean_recall(
    found: Sequence[Sequence[int]],
    truth: np.ndarray,
    k: int,
    *,
    found_scores: Sequence[Sequence[float]] | None = None,
    truth_scores: np.ndarray | None = None,
) -> float:
    """Mean :func:`recall_at_k` over queries (``truth`` row ``i`` belongs to query ``i``)."""
    if not found:
        return float("nan")
    values = [
        recall_at_k(
            f,
            truth[i],
            k,
            found_scores=None if found_scores is None else found_scores[i],
            truth_scores=None if truth_scores is None else truth_scores[i],
        )
        for i, f in enumerate(found)
    ]
    return float(np.mean(values))


def percentiles(values: Iterable[float], ps: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` (NaN when there are no values)."""
    return metrics.percentiles(list(values), ps)


@dataclass(frozen=True)
class Cliff:
    """A step from ``n1`` to ``n2`` where ``metric`` grew ``observed`` times against an
    expected ``expected`` times."""

    metric: str
    n1: int
    n2: int
    v1: float
    v2: float
    observed: float
    expected: float

    @property
    def excess(self) -> float:
        return self.observed / self.expected if self.expected > 0 else math.inf


def find_cliffs(
    points: Sequence[tuple[int, float]],
    *,
    metric: str,
    exponent: float,
    factor: float = 2.0,
    floor: float = 0.0,
) -> list[Cliff]:
    """Steps between neighbouring sizes where ``value`` grew at least ``factor`` times more
    than ``(n2/n1) ** exponent``. Points with a missing, non-finite or non-positive value are
    ignored; steps where both values are below ``floor`` are too small to judge (timer noise)."""
    clean = sorted(
        (int(n), float(v))
        for n, v in points
        if v is not None and math.isfinite(float(v)) and float(v) > 0
    )
    out = []
    for (n1, v1), (n2, v2) in itertools.pairwise(clean):
        if n2 <= n1 or max(v1, v2) < floor:
            continue
        observed = v2 / v1
        expected = (n2 / n1) ** exponent
        if observed >= factor * expected:
            out.append(Cliff(metric, n1, n2, v1, v2, observed, expected))
    return out


def fit_power(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares fit of ``v = a * n ** b`` in log-log space: ``(a, b)``. One point gives
    ``b = 1`` (linear through it)."""
    clean = [(float(n), float(v)) for n, v in points if n > 0 and v and v > 0 and math.isfinite(v)]
    if not clean:
        raise ValueError("no usable points")
    if len(clean) == 1:
        n, v = clean[0]
        return v / n, 1.0
    x = np.log([n for n, _ in clean])
    y = np.log([v for _, v in clean])
    b, log_a = np.polyfit(x, y, 1)
    return float(math.exp(log_a)), float(b)
