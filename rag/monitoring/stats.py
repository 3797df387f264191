"""The arithmetic of monitoring: percentiles, histograms and the Population Stability Index.

Everything here is a pure function over numpy arrays, tested against hand-computed cases.

* :func:`percentile`: linear interpolation between closest ranks (numpy's default
  ``"linear"`` method, Excel's ``PERCENTILE.INC``): the ``q``-th percentile of ``n`` sorted
  values sits at rank ``(n - 1) * q / 100``. One value is its own every percentile; no
  values have none (``None``).
* :func:`psi`: ``sum((a - e) * ln(a / e))`` over the bins, where ``e`` and ``a`` are the
  shares of the reference ("expected") and current ("actual") counts in each bin. A share
  of zero would make the sum infinite, so shares are floored at :data:`PSI_FLOOR` (0.0001)
  before the sum: an empty bin counts, finitely. Conventional reading (and ragkit's
  default thresholds): under 0.1 no change, 0.1 to 0.2 watch, over 0.2 a shift.
* :func:`quantile_edges` and :func:`bin_counts`: the bins a continuous value (a top-1
  score) is counted in, cut at the reference's quantiles so that each holds about as
  many reference values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Shares below this count as this in :func:`psi` (an empty bin would make it infinite).
PSI_FLOOR = 1e-4


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation between
    closest ranks; ``None`` for no values. NaNs are left out."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"a percentile is between 0 and 100, got {q}")
    arr = np.asarray(values, dtype=np.float64)
    arr = np.sort(arr[~np.isnan(arr)])
    if arr.size == 0:
        return None
    rank = (arr.size - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, arr.size - 1)
    return float(arr[lo] + (arr[hi] - arr[lo]) * (rank - lo))


def shares(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    """Counts as shares of their total (all zeros for a total of zero)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """The Population Stability Index of ``actual`` against ``expected``: two sequences of
    counts (or shares) over the same bins. Shares are floored at :data:`PSI_FLOOR`; either
    side with no counts at all is an error (there is nothing to compare)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.size == 0:
        raise ValueError(f"PSI needs two counts over the same bins, got {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any():
        raise ValueError("PSI counts cannot be negative")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("PSI needs at least one count on each side")
    pe = np.maximum(shares(e), PSI_FLOOR)
    pa = np.maximum(shares(a), PSI_FLOOR)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def quantile_edges(reference: Sequence[float] | np.ndarray, bins: int = 10) -> np.ndarray:
    """The ``bins - 1`` inner edges cutting ``reference`` into ``bins`` bins of about equal
    counts (repeated edges, from repeated values, are merged: fewer bins then)."""
    if bins < 2:
        raise ValueError(f"at least 2 bins, got {bins}")
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[~np.isnan(ref)]
    if ref.size == 0:
        raise ValueError("quantile edges need at least one reference value")
    inner = np.quantile(ref, np.arange(1, bins) / bins)
    return np.unique(inner)


def bin_counts(values: Sequence[float] | np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of ``values`` fall in each of the ``len(edges) + 1`` bins that the inner
    ``edges`` make: bin ``i`` holds ``edges[i-1] <= v < edges[i]``, the first everything
    below ``edges[0]`` and the last everything from ``edges[-1]`` up."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def category_counts(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Counts of the integer labels ``0 .. n-1`` (negative labels, "none", are left out)."""
    lab = np.asarray(labels, dtype=np.int64)
    lab = lab[(lab >= 0) & (lab < n)]
    return np.bincount(lab, minlength=n).astype(np.int64)
