"""The baseline a window of queries is held against: the query reference, and corpus drift.

The query reference of a collection (:func:`query_reference`) is what a window of its
queries looked like: the counts of their topics (nearest centroids of the corpus
reference, :mod:`rag.monitoring.drift`), the bins and counts of their top-1 dense scores
(ten bins at the deciles), the P95 of each stage's latency and the mean total per
operation. It is the one ``rag monitor baseline`` took (:func:`take_baseline`), else the
first ``reference_queries`` queries logged after the corpus reference was taken
(:func:`current_query_reference`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rag.monitoring.drift import CorpusReference, build_reference, corpus_counts
from rag.monitoring.events import OPS, STAGES
from rag.monitoring.querylog import QueryLog
from rag.monitoring.stats import bin_counts, category_counts, percentile, psi, quantile_edges
from rag.store import VectorStore

LATENCY_STAGES = tuple(s for s in STAGES if s != "total")


def dense_scores(events: Sequence[dict[str, Any]]) -> np.ndarray:
    vals = [
        e["top_score"]
        for e in events
        if e["score_kind"] == "dense" and not e["error"] and e["top_score"] is not None
    ]
    return np.asarray(vals, dtype=np.float64)


def stage_values(events: Sequence[dict[str, Any]], stage: str, op: str | None = None) -> list:
    return [
        e[stage]
        for e in events
        if e[stage] is not None and not e["error"] and (op is None or e["op"] == op)
    ]


def query_reference(
    events: Sequence[dict[str, Any]], ref: CorpusReference | None, *, how: str
) -> dict[str, Any]:
    """The reference of a window of queries: their topics' counts under ``ref``, the bins
    and counts of their top-1 dense scores, their P95 per stage and mean total per op.
    A query's topic is its logged centroid under ``ref``, or its logged vector assigned."""
    topics: list[int] = []
    if ref is not None:
        for e in events:
            if e["ref_id"] == ref.id and e["centroid"] is not None:
                topics.append(int(e["centroid"]))
            elif e.get("vector") is not None and not e["error"]:
                topics.append(int(ref.assign(e["vector"])[0]))
    scores = dense_scores(events)
    edges = quantile_edges(scores) if scores.size else np.zeros(0)
    latency = {}
    for stage in LATENCY_STAGES:
        p95 = percentile(stage_values(events, stage), 95)
        if p95 is not None:
            latency[stage] = p95
    for op in OPS:
        p95 = percentile(stage_values(events, "total", op), 95)
        if p95 is not None:
            latency[f"total.{op}"] = p95
    mean_total = {}
    for op in OPS:
        vals = stage_values(events, "total", op)
        if vals:
            mean_total[op] = float(np.mean(vals))
    return {
        "how": how,
        "ref_id": None if ref is None else ref.id,
        "queries": len(events),
        "from": events[0]["ts"] if events else None,
        "to": events[-1]["ts"] if events else None,
        "topics": [] if ref is None else category_counts(topics, ref.bins).tolist(),
        "score_edges": edges.tolist(),
        "score_counts": bin_counts(scores, edges).tolist() if scores.size else [],
        "latency_p95": latency,
        "mean_total": mean_total,
    }


def current_query_reference(
    log: QueryLog, ref: CorpusReference | None, reference_queries: int
) -> tuple[dict[str, Any] | None, str]:
    """The query reference in force and a line saying what it is (or why there is none)."""
    saved = log.query_reference()
    if saved is not None and (ref is None or saved.get("ref_id") == ref.id):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(saved["to"] or 0))
        return saved, f"{saved['queries']} queries up to {when} (rag monitor baseline)"
    n = reference_queries
    first = log.first_events(ref.created if ref is not None else 0.0, n)
    if len(first) < n:
        return None, f"none yet: the first {n} queries become it ({len(first)} logged so far)"
    return query_reference(first, ref, how="first"), f"the first {n} queries"


def take_baseline(
    log: QueryLog,
    *,
    events: Sequence[dict[str, Any]],
    min_queries: int,
    store: VectorStore | None = None,
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    embed_model: str = "",
) -> dict[str, Any]:
    """A new baseline: with ``store`` and ``embed``, a new corpus reference first; then the
    query reference from ``events`` (those with a topic under the corpus reference: logged
    under it, or with a logged vector). With fewer than ``min_queries`` such events none
    is saved, and the next queries logged become it."""
    if store is not None and embed is not None:
        new = build_reference(store, embed, embed_model=embed_model)
        if new is not None:
            log.save_reference(new)
    ref = log.reference()
    usable = [
        e
        for e in events
        if not e["error"]
        and (
            ref is None
            or (e["ref_id"] == ref.id and e["centroid"] is not None)
            or e["vector"] is not None
        )
    ]
    out: dict[str, Any] = {
        "corpus_reference": None if ref is None else ref.to_json() | {"probe_scores": None},
        "query_reference": None,
        "usable_queries": len(usable),
    }
    if len(usable) >= min_queries:
        qref = query_reference(usable, ref, how="baseline")
        log.save_query_reference(qref)
        out["query_reference"] = qref
    else:
        log.save_query_reference(None)
    return out


def topic_counts(events: Sequence[dict[str, Any]], ref: CorpusReference) -> np.ndarray:
    """How many of ``events`` have each of the reference's centroids as their topic."""
    return category_counts(
        [
            e["centroid"] if e["ref_id"] == ref.id else int(ref.assign(e["vector"])[0])
            for e in events
            if not e["error"]
            and ((e["ref_id"] == ref.id and e["centroid"] is not None) or e["vector"] is not None)
        ],
        ref.bins,
    )


def record_corpus_drift(log: QueryLog, store: VectorStore) -> float | None:
    """After an ingest: the corpus's topics now against the reference's, recorded in the
    log's drift history; ``None`` when there is no reference (or an empty store)."""
    ref = log.reference()
    if ref is None:
        return None
    counts = corpus_counts(store, ref)
    if counts.sum() == 0:
        return None
    value = psi(ref.corpus_counts, counts)
    log.add_drift(
        "corpus", value, {"ref_id": ref.id, "chunks": int(counts.sum()), "counts": counts.tolist()}
    )
    return value


def timeline(
    events: Sequence[dict[str, Any]],
    ref: CorpusReference | None,
    qref: dict[str, Any] | None,
    *,
    group: int = 50,
) -> list[dict[str, Any]]:
    """The window in consecutive groups of ``group`` queries: each group's last time, its
    P50 and P95 total latency, and its PSIs against the query reference (for plots)."""
    out = []
    for i in range(0, len(events) - group + 1, group):
        part = events[i : i + group]
        totals = [e["total"] for e in part if e["total"] is not None and not e["error"]]
        row: dict[str, Any] = {
            "ts": part[-1]["ts"],
            "p50": percentile(totals, 50),
            "p95": percentile(totals, 95),
            "psi_topics": None,
            "psi_scores": None,
        }
        if ref is not None and qref is not None and qref["topics"] and sum(qref["topics"]):
            counts = topic_counts(part, ref)
            if counts.sum():
                row["psi_topics"] = psi(qref["topics"], counts)
        if qref is not None and qref["score_counts"]:
            counts = bin_counts(dense_scores(part), np.asarray(qref["score_edges"]))
            if counts.sum():
                row["psi_scores"] = psi(qref["score_counts"], counts)
        out.append(row)
    return out
