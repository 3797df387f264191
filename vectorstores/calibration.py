"""Measuring a store's recall on its own vectors, for ``calibrate`` (:mod:`rag.store`).

A store that chooses its search parameter from a recall target needs queries and exact
answers, and has neither: it has its vectors. A sample of them (fixed seed) serves as the
queries, and each query's own row is left out of both the exact answer and the store's, so
that recall@k counts the k neighbours a query near (not on) a stored vector would get. The
exact answer is a scan of every vector in batches (memory stays at one batch), which bounds
the calibration's cost: :func:`sample_size` shrinks the sample as the collection grows so
that the scan stays near 2 * 10**10 multiply-adds (a second or two on two cores).

The functions take ids as NumPy arrays of any kind (FAISS row ids, or string ids from
``scan``), so every backend in this layer can use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rag.store import Calibration, OptionValue

#: recall@K is what a calibration measures.
K = 10
#: Sample queries at most, and at least (when the collection holds that many).
MAX_QUERIES = 500
MIN_QUERIES = 200
_SCAN_BUDGET = 2e10  # multiply-adds of the exact scan
SEED = 0
_Z95 = 1.645  # one-sided 95% normal quantile


def sample_size(count: int, dim: int) -> int:
    """How many of ``count`` vectors to use as queries."""
    by_budget = int(_SCAN_BUDGET / max(1, count * dim))
    return min(count, MAX_QUERIES, max(MIN_QUERIES, by_budget))


def sample(ids: np.ndarray, size: int) -> np.ndarray:
    """``size`` of ``ids``, chosen with the fixed seed, in their original order."""
    picked = np.random.default_rng(SEED).choice(len(ids), size=size, replace=False)
    return ids[np.sort(picked)]


def exact_neighbours(
    queries: np.ndarray,
    query_ids: np.ndarray,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    k: int,
) -> np.ndarray:
    """The ids of each query's ``k`` nearest vectors by inner product, its own id left out:
    a ``(len(queries), k)`` array, best first. ``batches`` yields ``(ids, vectors)``."""
    n = len(queries)
    best_scores = np.full((n, 0), -np.inf, dtype=np.float32)
    best_ids: np.ndarray | None = None
    for ids, vecs in batches:
        scores = queries @ vecs.T
        scores[np.equal.outer(query_ids, ids)] = -np.inf
        ids_b = np.broadcast_to(ids, scores.shape)
        all_scores = np.hstack([best_scores, scores])
        all_ids = ids_b if best_ids is None else np.hstack([best_ids, ids_b])
        keep = min(k, all_scores.shape[1])
        top = np.argpartition(-all_scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    if best_ids is None:
        raise ValueError("no vectors to measure against")
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


@dataclass(frozen=True)
class Recall:
    """A measured recall: the sample's mean, and the one-sided 95% lower confidence bound
    on the mean (``mean - 1.645 x standard error`` over the sample's queries)."""

    mean: float
    low: float


def recall(found: Sequence[Sequence], query_ids: np.ndarray, truth: np.ndarray) -> Recall:
    """Recall@k of ``found`` (each query's ids, best first, searched for ``k + 1`` so that
    the query's own id can be dropped) against ``truth`` (:func:`exact_neighbours`)."""
    k = truth.shape[1]
    each = np.array(
        [
            len(set([i for i in row if i != own][:k]) & set(exact.tolist())) / k
            for own, row, exact in zip(query_ids, found, truth, strict=True)
        ]
    )
    mean = float(each.mean())
    error = float(each.std(ddof=1) / np.sqrt(len(each))) if len(each) > 1 else 0.0
    return Recall(mean, mean - _Z95 * error)


def smallest_reaching(
    values: Sequence[int], measure: Callable[[int], Recall], target: float
) -> tuple[int, float, bool]:
    """The first of ``values`` (ascending) whose recall reaches ``target`` with 95%
    confidence (its lower bound does), with its mean recall and ``True``; else the last
    value, its mean recall and ``False``.

    The bound, not the mean: a sample of 200 to 500 queries measures recall@10 to about
    +-0.01, and a choice made on the mean falls short of the target about half the time
    it is near it (at 1M vectors, nprobe 4 measured 0.955 on 200 of the collection's own
    vectors and 0.946 on 500 held-out queries)."""
    got = Recall(0.0, 0.0)
    for value in values:
        got = measure(value)
        if got.low >= target:
            return value, got.mean, True
    return values[-1], got.mean, False


def recorder(
    target: float, *, count: int, fixed: Mapping[str, OptionValue], started: float
) -> Callable[[dict[str, OptionValue], float, int, str], Calibration]:
    """A function ``(options, recall, queries, note) -> Calibration`` for one calibration of
    a collection of ``count`` chunks begun at ``started`` (``time.perf_counter()``)."""

    def record(
        options: dict[str, OptionValue], recall: float, queries: int, note: str
    ) -> Calibration:
        return Calibration(
            target=target,
            options=options,
            recall=round(recall, 4),
            queries=queries,
            count=count,
            k=K,
            fixed=dict(fixed),
            seconds=round(time.perf_counter() - started, 3),
            note=note,
        )

    return record
