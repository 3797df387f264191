"""Retrieval modes: dense, BM25 and hybrid, with optional MMR re-ranking.

* ``dense``: the query's embedding searched in the vector store (filters pushed down).
* ``bm25``: Okapi BM25 over the chunk texts (:mod:`rag.bm25`).
* ``hybrid``: both, fused. Reciprocal rank fusion by default: each list contributes
  ``1 / (rrf_k + rank)`` per chunk (rank from 1; ``rrf_k`` = 60 as in Cormack et al.,
  2009), which needs no score calibration. ``fusion="weighted"`` instead min-max
  normalises each list's scores over the candidates and adds them as
  ``weight * dense + (1 - weight) * bm25``.
* ``mmr=True``: maximal marginal relevance over a larger candidate set, trading relevance
  for diversity: each pick maximises ``lambda * sim(query, d) - (1 - lambda) * max sim(d, picked)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import ConfigError
from rag.filters import Filter
from rag.store import folder_writable
from rag.types import Hit

RRF_K = 60
FUSIONS = ("rrf", "weighted")


class Retriever:
    """Searches one collection in any mode."""

    def __init__(
        self,
        store: Any,
        embedder: Any,
        *,
        bm25_dir: Path,
        stamp: Callable[[], str],
        embed_texts: Callable[[Sequence[str]], np.ndarray] | None = None,
        fusion: str = "rrf",
        rrf_k: int = RRF_K,
        weight: float = 0.5,
        candidates: int = 100,
        mmr_lambda: float = 0.5,
        reranker: Any = None,
    ) -> None:
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"the fusion weight must be between 0 and 1, got {weight}")
        self.store = store
        self.embedder = embedder
        self.bm25_dir = bm25_dir
        self._stamp = stamp
        self._embed_texts = embed_texts or embedder.embed
        self.fusion = fusion
        self.rrf_k = rrf_k
        self.weight = weight
        self.candidates = candidates
        self.mmr_lambda = mmr_lambda
        self.reranker = reranker
        self._bm25: Any = None
        self._bm25_stamp: str | None = None

    # --- BM25 index ------------------------------------------------------------------------

    def bm25(self) -> Any:
        """The BM25 index, loaded, or rebuilt from the store when stale."""
        from rag.bm25 import BM25Index

        stamp = self._stamp()
        if self._bm25 is not None and self._bm25_stamp == stamp:
            return self._bm25
        index = BM25Index.load(self.bm25_dir, stamp)
        if index is None:
            index = self.rebuild_bm25(stamp)
        self._bm25, self._bm25_stamp = index, stamp
        return index

    def rebuild_bm25(self, stamp: str | None = None) -> Any:
        from rag.bm25 import BM25Index

        stamp = stamp or self._stamp()
        chunks = [c for batch, _ in self.store.scan(batch_size=2000) for c in batch]
        index = BM25Index.build(chunks)
        if folder_writable(self.bm25_dir.parent):  # on a read-only data directory, kept in memory
            index.save(self.bm25_dir, stamp)
        self._bm25, self._bm25_stamp = index, stamp
        return index

    # --- search ----------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        where: Filter | None = None,
        mode: str = "dense",
        mmr: bool = False,
        mmr_lambda: float | None = None,
        fetch_k: int | None = None,
        vector: np.ndarray | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query``. ``vector`` is the query's embedding when the
        caller already has it (batched evaluation). With a re-ranker, a larger candidate
        pool is scored by it first; MMR then diversifies the re-ranked list. ``timings``,
        when given, gets the seconds spent finding candidates (``search``: the store, and
        BM25) and ordering them (``rerank``: fusion, the re-ranker and MMR)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if mode not in ("dense", "bm25", "hybrid"):
            raise ConfigError(f"unknown retrieval mode {mode!r}; choose dense, bm25 or hybrid")
        pool = max(fetch_k or 4 * k, 20) if (mmr or self.reranker is not None) else k
        qvec = vector
        if mode != "bm25" and qvec is None:
            qvec = self.embedder.embed_query(query)
        t0 = time.perf_counter()
        if mode == "dense":
            hits = self.store.search(qvec, k=pool, where=where)
            t1 = time.perf_counter()
        elif mode == "bm25":
            hits = self.bm25().search(query, k=pool, where=where)
            t1 = time.perf_counter()
        else:
            n = max(self.candidates, pool)
            dense = self.store.search(qvec, k=n, where=where)
            sparse = self.bm25().search(query, k=n, where=where)
            t1 = time.perf_counter()
            hits = fuse(
                dense, sparse, k=pool, method=self.fusion, rrf_k=self.rrf_k, weight=self.weight
            )
        if self.reranker is not None:
            hits = self.reranker.rerank(query, hits, k=max(k, min(len(hits), 2 * k)) if mmr else k)
        if mmr and len(hits) > 1:
            if qvec is None:
                qvec = self.embedder.embed_query(query)
            texts = [h.chunk.text for h in hits]
            lam = self.mmr_lambda if mmr_lambda is None else mmr_lambda
            hits = mmr_rerank(qvec, hits, self._embed_texts(texts), k=k, lam=lam)
        if timings is not None:
            timings.update(search=t1 - t0, rerank=time.perf_counter() - t1)
        return hits[:k]

    def search_batch(
        self, queries: Sequence[str], *, k: int, mode: str = "dense", where: Filter | None = None
    ) -> list[list[Hit]]:
        """Many queries, their embeddings computed in one batch."""
        vecs = self.embedder.embed(list(queries)) if mode != "bm25" else [None] * len(queries)
        return [
            self.search(q, k=k, mode=mode, where=where, vector=v)
            for q, v in zip(queries, vecs, strict=True)
        ]


def fuse(
    dense: Sequence[Hit],
    sparse: Sequence[Hit],
    *,
    k: int,
    method: str = "rrf",
    rrf_k: int = RRF_K,
    weight: float = 0.5,
) -> list[Hit]:
    """Fuse two ranked lists into one of ``k`` hits (see the module docstring)."""
    chunks = {h.id: h.chunk for h in [*sparse, *dense]}
    scores: dict[str, float] = dict.fromkeys(chunks, 0.0)
    if method == "rrf":
        for hits in (dense, sparse):
            for rank, h in enumerate(hits, start=1):
                scores[h.id] += 1.0 / (rrf_k + rank)
    elif method == "weighted":
        for hits, w in ((dense, weight), (sparse, 1.0 - weight)):
            if not hits:
                continue
            vals = np.array([h.score for h in hits], dtype=np.float64)
            lo, hi = float(vals.min()), float(vals.max())
            span = hi - lo
            for h, v in zip(hits, vals, strict=True):
                scores[h.id] += w * ((v - lo) / span if span > 0 else 1.0)
    else:
        raise ConfigError(f"unknown fusion {method!r}; choose from {', '.join(FUSIONS)}")
    order = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [Hit(i, scores[i], chunks[i]) for i in order]


def mmr_rerank(
    query: np.ndarray, hits: Sequence[Hit], vectors: np.ndarray, *, k: int, lam: float = 0.5
) -> list[Hit]:
    """Maximal marginal relevance: ``k`` hits from ``hits``, balancing relevance to the
    query against similarity to what is already picked (``lam`` = 1 is pure relevance)."""
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"the MMR lambda must be between 0 and 1, got {lam}")
    vecs = np.asarray(vectors, dtype=np.float32)
    relevance = vecs @ np.asarray(query, dtype=np.float32)
    picked: list[int] = []
    redundancy = np.full(len(hits), -np.inf, dtype=np.float32)
    left = set(range(len(hits)))
    while left and len(picked) < k:
        cand = np.array(sorted(left))
        red = np.where(np.isfinite(redundancy[cand]), redundancy[cand], 0.0)
        score = lam * relevance[cand] - (1 - lam) * red
        best = int(cand[int(np.argmax(score))])
        picked.append(best)
        left.remove(best)
        redundancy = np.maximum(redundancy, vecs @ vecs[best])
    return [hits[i] for i in picked]
