"""``rag eval retrieval``: retrieval quality on a BEIR-format dataset, per mode.

The corpus is written out as one text file per document (title and text joined with a
space, as BEIR joins them) under the data directory and ingested like any folder, so a
second run finds the collection up to date and embeds nothing. Documents longer than the
model's limit become several chunks; a document's score is its best chunk's (MaxP), and
each query asks for enough chunks to rank 100 documents.

Queries run in batches (one embedding call per batch); a query's latency is its share of
the batch's embedding time plus its own search time. Metrics come from
:mod:`eval.metrics` (trec_eval conventions, through ranx).
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.datasets import load_beir, write_if_changed
from eval.metrics import DEFAULT_METRICS, evaluate_run, percentiles
from rag.collection import open_collection
from rag.config import Settings

MODES = ("dense", "bm25", "hybrid")
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def corpus_folder(dataset: Path, data_dir: Path) -> tuple[Path, str]:
    """Where the corpus is written out, and the collection name, both derived from the
    dataset's resolved path (so two datasets never share them)."""
    resolved = dataset.resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", resolved.name)[:40].strip("-") or "dataset"
    return data_dir / "eval" / f"{name}-{tag}" / "docs", f"eval-{name}-{tag}"


def _filename(doc_id: str) -> str:
    if _SAFE.match(doc_id) and not doc_id.startswith("."):
        return f"{doc_id}.txt"
    return f"_{hashlib.sha256(doc_id.encode()).hexdigest()[:24]}.txt"


def write_corpus(ds: Any, folder: Path) -> dict[str, str]:
    """Write each document once (unchanged files keep their mtime, so re-ingesting is
    free); returns {absolute file path: document id}."""
    folder.mkdir(parents=True, exist_ok=True)
    mapping: dict[str, str] = {}
    wanted: set[str] = set()
    for doc_id in ds.corpus:
        path = folder / _filename(doc_id)
        wanted.add(path.name)
        write_if_changed(path, ds.doc_text(doc_id) + "\n")
        mapping[str(path.resolve())] = doc_id
    for stale in folder.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    return mapping


def run(
    dataset: Path,
    settings: Settings,
    *,
    modes: Sequence[str] = MODES,
    batch_size: int = 64,
    depth: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    ds = load_beir(dataset)
    folder, collection = corpus_folder(dataset, settings.data_dir)
    settings = settings.with_(collection=collection)
    t0 = time.perf_counter()
    doc_of = write_corpus(ds, folder)
    with open_collection(settings, create=True) as col:
        bar = _bar("ingest", progress)
        report = col.ingest([folder], progress=bar)
        if bar is not None:
            bar.close()
        ingest_s = time.perf_counter() - t0
        chunks = report.total_chunks
        # Enough chunks to fill `depth` documents: documents split into several chunks take
        # several slots.
        k_chunks = min(chunks, int(depth * max(1.0, chunks / max(1, len(ds.corpus))) * 1.5) + 10)
        qids = list(ds.queries)
        texts = [ds.queries[q] for q in qids]
        out: dict[str, Any] = {
            "dataset": str(dataset),
            "store": settings.store,
            "embed_model": col.embed_model,
            "embed_backend": col.embed_backend,
            "documents": len(ds.corpus),
            "chunks": chunks,
            "queries": len(qids),
            "ingest_seconds": round(ingest_s, 2),
            "embedded_at_ingest": report.embedded,
            "modes": {},
        }
        retriever = col.retriever
        if any(m != "dense" for m in modes):
            retriever.bm25()  # build or load once, outside the timings
        for mode in modes:
            runs: dict[str, dict[str, float]] = {}
            latencies: list[float] = []
            qbar = _bar(f"queries ({mode})", progress, total=len(qids))
            for start in range(0, len(qids), batch_size):
                batch_q = qids[start : start + batch_size]
                batch_t = texts[start : start + batch_size]
                te = time.perf_counter()
                vecs = col.embedder.embed(batch_t) if mode != "bm25" else [None] * len(batch_t)
                embed_share = (time.perf_counter() - te) / len(batch_t)
                for qid, text, vec in zip(batch_q, batch_t, vecs, strict=True):
                    ts = time.perf_counter()
                    hits = retriever.search(text, vector=vec, k=k_chunks, mode=mode)
                    latencies.append(embed_share + time.perf_counter() - ts)
                    runs[qid] = _max_per_doc(hits, doc_of, depth)
                if qbar is not None:
                    qbar.update(len(batch_q))
            if qbar is not None:
                qbar.close()
            metrics = evaluate_run(ds.qrels, runs, DEFAULT_METRICS)
            lat = percentiles([x * 1000 for x in latencies], (50, 95))
            out["modes"][mode] = {
                **{m: round(v, 4) for m, v in metrics.items()},  # type: ignore[union-attr]
                "latency_ms": {p: round(v, 2) for p, v in lat.items()},
            }
    return out


def _max_per_doc(hits: Sequence[Any], doc_of: dict[str, str], depth: int) -> dict[str, float]:
    scores: dict[str, float] = {}
    for h in hits:
        doc = doc_of.get(h.chunk.source)
        if doc is not None and (doc not in scores or h.score > scores[doc]):
            scores[doc] = float(h.score)
    best = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:depth]
    return dict(best)


def _bar(desc: str, enabled: bool, total: int | None = None) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    if total is not None:
        return tqdm(total=total, desc=desc, unit="query", file=sys.stderr, leave=False)

    class _Ingest:
        def __init__(self) -> None:
            self.bar: Any = None

        def __call__(self, p: Any) -> None:
            if self.bar is None:
                self.bar = tqdm(
                    total=p.files_total, desc=desc, unit="doc", file=sys.stderr, leave=False
                )
            self.bar.n = p.files_done
            self.bar.refresh()

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return _Ingest()


def markdown(result: dict[str, Any]) -> str:
    """The headline table."""
    lines = [
        f"{Path(result['dataset']).name} — {result['documents']} documents ({result['chunks']} chunks), "
        f"{result['queries']} queries; store {result['store']}, {result['embed_model']} [{result['embed_backend']}]",
        "",
        "| mode | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in result["modes"].items():
        lines.append(
            f"| {mode} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['recall@100']:.4f} | "
            f"{m['mrr@10']:.4f} | {m['latency_ms']['p50']:.1f} | {m['latency_ms']['p95']:.1f} |"
        )
    return "\n".join(lines)
