"""What a recall target chooses for a FAISS collection, and what it gives on held-out queries.

A FAISS collection of ``--n`` of the benchmark's synthetic unit vectors (384 dimensions,
``eval/bench_data.py``: cached, with exact ground truth for queries drawn apart from the
base set) is built exact (flat), its held-out queries are timed, and then the store is
calibrated (``calibrate``, what ``rag ingest --recall`` runs after an ingest) for each
``--targets`` value in turn. For each choice: the options, the recall the calibration
measured on the collection's own vectors, the recall@10 the held-out queries get against the
dataset's ground truth, and their latency, one query at a time in this process. ``--index
hnsw`` names the index (the calibration then chooses ``ef_search``); ``auto`` leaves the
index to the calibration. Fixed seeds throughout.

    python -m eval.recall_target --n 100000 --targets 0.9,0.95,0.99 --index auto
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval import bench_data
from eval.bench import DEFAULT_CACHE
from eval.metrics import percentiles
from eval.record import write_result
from rag.store import StoreConfig, VectorStore, calibrate, open_store
from rag.types import Chunk

ROOT = Path(__file__).resolve().parent.parent
BATCH = 10_000
K = 10


def build(folder: Path, vectors: np.ndarray, options: dict[str, Any]) -> VectorStore:
    store = open_store(
        "faiss", "recall", dim=vectors.shape[1], config=StoreConfig(folder, options=options)
    )
    for start in range(0, len(vectors), BATCH):
        block = np.ascontiguousarray(vectors[start : start + BATCH], dtype=np.float32)
        store.upsert([Chunk(f"{start + i}", "t", {}) for i in range(len(block))], block)
    return store


def held_out(store: VectorStore, queries: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """recall@10 against the exact neighbours, and latency, one query at a time."""
    times, total = [], 0
    for q, exact in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        hits = store.search(q, k=K)
        times.append((time.perf_counter() - t0) * 1e3)
        total += len({int(h.id) for h in hits} & set(exact[:K].tolist()))
    p = percentiles(times, (50, 99))
    return {
        "recall": round(total / (K * len(queries)), 4),
        "p50_ms": round(p["p50"], 3),
        "p99_ms": round(p["p99"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.recall_target", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--n", type=int, default=100_000, help="chunks in the collection")
    p.add_argument("--targets", default="0.9,0.95,0.99", help="recall targets, comma-separated")
    p.add_argument("--index", choices=("auto", "hnsw"), default="auto")
    p.add_argument("--queries", type=int, default=500, help="held-out queries of the dataset")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or ROOT / "eval" / "results" / f"recall_target-{args.index}.json"

    data = bench_data.prepare(
        "synthetic", args.n, dim=384, cache_dir=args.cache_dir, queries=args.queries, log=print
    )
    queries = data.queries()
    truth, _ = data.truth()
    named: dict[str, Any] = {} if args.index == "auto" else {"index": args.index}
    work = Path(tempfile.mkdtemp(prefix="ragkit-recall-"))
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        store = build(work, data.base(), {})
        flat = {"options": {"index": "flat"}, "build_s": round(time.perf_counter() - t0, 1)}
        flat.update(held_out(store, queries, truth))
        print(json.dumps(flat), flush=True)
        for target in [float(t) for t in args.targets.split(",") if t.strip()]:
            cal = calibrate(store, target, fixed=named)
            row = {
                "target": target,
                "options": cal.options,
                "named": named,
                "calibration_recall": cal.recall,
                "calibration_queries": cal.queries,
                "calibration_s": cal.seconds,
                "note": cal.note,
                "held_out": held_out(store, queries, truth),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result(
        out,
        "eval.recall_target",
        argv,
        {"n": args.n, "dim": data.dim, "dataset": data.key, "flat": flat, "targets": rows},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
