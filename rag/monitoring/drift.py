"""The corpus reference that drift is measured against, and corpus drift between ingests.

A :class:`CorpusReference` is taken from a collection's chunk vectors when the collection
is built (each ingest that creates it) or on demand (``rag monitor baseline``):

* **centroids**: k-means (:func:`kmeans`, k-means++ seeding, a fixed seed, at most 25
  Lloyd rounds) on up to 20,000 chunk vectors sampled uniformly from the whole store
  (reservoir sampling over one scan); every chunk is then counted at its nearest centroid
  (``corpus_counts``). A query's nearest centroid is its "topic", and a query too far from
  every centroid, less similar to its nearest one than 95% of the corpus probes below are
  to theirs (``topic_threshold``), has the extra topic "none of the corpus's" (number
  ``k``). The PSI of the queries' topics against a reference window of queries says
  whether people ask about other parts of the corpus than they did, or about other things.
* **the low-score threshold** ("out of coverage"): probes made from the corpus itself, a
  window of 16 words from each of 200 sampled chunks, are embedded as queries and searched;
  each probe's best score among the *other* chunks (its own chunk left out) says how well
  the corpus answers a question on that passage's subject from elsewhere. The threshold is
  the 5th percentile of those scores: a query whose best passage scores under it is less
  covered than 95% of the corpus's own passages would be.

Corpus drift between two ingests is the PSI of the chunks' centroid counts now against
the reference's (:func:`corpus_counts`): a corpus that stops looking like what it was built
from moves its chunks to other centroids.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag.monitoring.stats import percentile
from rag.store import VectorStore, search_many

#: Defaults of :func:`build_reference`.
CENTROIDS = 10
SAMPLE = 20_000
PROBES = 200
PROBE_WORDS = 16
COVERAGE_PERCENTILE = 5.0
SEED = 0


@dataclass
class CorpusReference:
    """What a collection's corpus looked like when the reference was taken."""

    id: str
    created: float
    embed_model: str
    centroids: np.ndarray  # (k, dim) float32, unit rows
    corpus_counts: np.ndarray  # (bins,) chunks in each topic
    threshold: float | None  # the low-score ("out of coverage") threshold, None: no probes
    probe_scores: list[float] = field(default_factory=list)
    #: Under this similarity to its nearest centroid a vector is in no topic (``k``).
    topic_threshold: float | None = None

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def bins(self) -> int:
        """The number of topics: the ``k`` centroids, and "none" when there is a threshold."""
        return self.k + (self.topic_threshold is not None)

    @property
    def chunks(self) -> int:
        return int(self.corpus_counts.sum())

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The topic of each row: its nearest centroid (by inner product, the stores'
        cosine), or ``k`` when it is under ``topic_threshold`` from every centroid."""
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if v.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"vectors of {v.shape[1]} dimensions against {self.centroids.shape[1]}-d centroids"
            )
        sims = v @ self.centroids.T
        topics = np.argmax(sims, axis=1).astype(np.int64)
        if self.topic_threshold is not None:
            topics[sims.max(axis=1) < self.topic_threshold] = self.k
        return topics

    def to_json(self) -> dict[str, Any]:
        """Everything but the centroids (kept as a blob beside this JSON)."""
        return {
            "id": self.id,
            "created": self.created,
            "embed_model": self.embed_model,
            "k": self.k,
            "dim": int(self.centroids.shape[1]),
            "corpus_counts": [int(c) for c in self.corpus_counts],
            "threshold": self.threshold,
            "probe_scores": [round(s, 6) for s in self.probe_scores],
            "topic_threshold": self.topic_threshold,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], centroids: bytes) -> CorpusReference:
        cents = np.frombuffer(centroids, dtype=np.float32).reshape(int(data["k"]), int(data["dim"]))
        return cls(
            id=str(data["id"]),
            created=float(data["created"]),
            embed_model=str(data["embed_model"]),
            centroids=cents.copy(),
            corpus_counts=np.asarray(data["corpus_counts"], dtype=np.int64),
            threshold=data.get("threshold"),
            probe_scores=[float(s) for s in data.get("probe_scores", [])],
            topic_threshold=data.get("topic_threshold"),
        )


def kmeans(
    vectors: np.ndarray, k: int, *, seed: int = SEED, rounds: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids, labels)``: spherical k-means (inner product, unit centroids) of the rows
    of ``vectors``, seeded by k-means++; at most ``rounds`` Lloyd rounds, fewer when the
    labels stop changing. ``k`` is cut to the number of distinct rows."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("k-means needs a non-empty matrix of vectors")
    k = max(1, min(k, len(np.unique(x, axis=0))))
    rng = np.random.default_rng(seed)
    centers = [x[int(rng.integers(len(x)))]]
    # k-means++: each next seed drawn with probability proportional to its squared distance
    # (for unit vectors 2 - 2 cos) from the nearest seed so far.
    dist = np.maximum(2.0 - 2.0 * (x @ centers[0]), 0.0)
    for _ in range(1, k):
        total = float(dist.sum())
        if total <= 0:
            break
        nxt = x[int(rng.choice(len(x), p=dist / total))]
        centers.append(nxt)
        dist = np.minimum(dist, np.maximum(2.0 - 2.0 * (x @ nxt), 0.0))
    c = np.stack(centers).astype(np.float32)
    labels = np.full(len(x), -1, dtype=np.int64)
    for _ in range(rounds):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(c)):
            members = x[labels == j]
            if len(members):
                m = members.sum(axis=0)
                norm = float(np.linalg.norm(m))
                c[j] = m / norm if norm > 0 else c[j]
    return c, labels


def _sample(
    store: VectorStore, size: int, probes: int, seed: int
) -> tuple[np.ndarray, list[tuple[str, str]], int]:
    """Up to ``size`` vectors and ``probes`` (chunk id, text) pairs drawn uniformly from one
    scan of ``store`` (reservoir sampling), and the number of chunks seen."""
    rng = random.Random(seed)
    vecs: list[np.ndarray] = []
    texts: list[tuple[str, str]] = []
    seen = 0
    for chunks, vectors in store.scan(batch_size=2000):
        for chunk, vec in zip(chunks, vectors, strict=True):
            seen += 1
            if len(vecs) < size:
                vecs.append(vec)
            else:
                j = rng.randrange(seen)
                if j < size:
                    vecs[j] = vec
            if len(texts) < probes:
                texts.append((chunk.id, chunk.text))
            else:
                j = rng.randrange(seen)
                if j < probes:
                    texts[j] = (chunk.id, chunk.text)
    matrix = np.asarray(vecs, dtype=np.float32) if vecs else np.zeros((0, 0), np.float32)
    return matrix, texts, seen


def corpus_counts(store: VectorStore, reference: CorpusReference) -> np.ndarray:
    """How many of the store's chunks are nearest to each of the reference's centroids."""
    counts = np.zeros(reference.bins, dtype=np.int64)
    for _, vectors in store.scan(batch_size=5000):
        if len(vectors):
            counts += np.bincount(reference.assign(vectors), minlength=reference.bins)
    return counts


def probe_text(text: str, rng: random.Random, words: int = PROBE_WORDS) -> str:
    """A window of ``words`` words from ``text`` at a random place: a query-sized probe."""
    parts = text.split()
    if len(parts) <= words:
        return " ".join(parts)
    start = rng.randrange(len(parts) - words + 1)
    return " ".join(parts[start : start + words])


def build_reference(
    store: VectorStore,
    embed: Callable[[Sequence[str]], np.ndarray],
    *,
    embed_model: str,
    centroids: int = CENTROIDS,
    sample: int = SAMPLE,
    probes: int = PROBES,
    seed: int = SEED,
) -> CorpusReference | None:
    """The reference of the corpus in ``store`` (see the module docstring); ``None`` for a
    store with fewer than two chunks. ``embed`` embeds the probes as queries."""
    vectors, texts, seen = _sample(store, sample, probes, seed)
    if seen < 2:
        return None
    cents, _ = kmeans(vectors, min(centroids, max(2, seen // 10)), seed=seed)
    ref = CorpusReference(
        id=uuid.uuid4().hex[:12],
        created=time.time(),
        embed_model=embed_model,
        centroids=cents,
        corpus_counts=np.zeros(len(cents), dtype=np.int64),
        threshold=None,
    )
    rng = random.Random(seed)
    probe_texts = [(cid, probe_text(text, rng)) for cid, text in texts if text.strip()]
    if probe_texts:
        qv = np.asarray(embed([t for _, t in probe_texts]), dtype=np.float32)
        ref.topic_threshold = percentile((qv @ cents.T).max(axis=1), COVERAGE_PERCENTILE)
        scores = []
        for (cid, _), hits in zip(probe_texts, search_many(store, qv, k=2), strict=True):
            others = [h.score for h in hits if h.id != cid]
            if others:
                scores.append(float(others[0]))
        ref.probe_scores = scores
        ref.threshold = percentile(scores, COVERAGE_PERCENTILE)
    ref.corpus_counts = (
        corpus_counts(store, ref)
        if seen > len(vectors)
        else np.bincount(ref.assign(vectors), minlength=ref.bins).astype(np.int64)
    )
    return ref
