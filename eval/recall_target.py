"""What a recall target chooses for a collection, and what it gives on held-out queries.

A FAISS or pgvector collection of ``--n`` of the benchmark's synthetic unit vectors (384
dimensions, ``eval/bench_data.py``: cached, with exact ground truth for queries drawn apart
from the base set, metadata ``{"bucket": row % 100}``) is built with the options named by
``--store-opt`` (none: the store's defaults; FAISS's is an exact flat index), its held-out
queries are timed, and then the store is calibrated (``calibrate``, what ``rag ingest
--recall`` runs after an ingest) for each ``--targets`` value in turn, the named options kept
as they are. For each choice: the options, the recall the calibration measured on the
collection's own vectors, the recall@10 the held-out queries get against the dataset's
ground truth, and their latency, one query at a time in this process; with ``--filtered``
also the 1% (``bucket = 7``) and 10% (``bucket < 10``) filters against their own ground
truth. ``--index hnsw`` is short for ``--store-opt index=hnsw``. Fixed seeds throughout.

    python -m eval.recall_target --n 100000 --targets 0.9,0.95,0.99
    python -m eval.recall_target --store pgvector --n 1000000 --targets 0.95 --filtered
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
from eval.bench_metrics import fmt_n
from eval.metrics import percentiles
from eval.record import write_result
from rag.commands import parse_store_options
from rag.store import StoreConfig, VectorStore, calibrate, open_store
from rag.types import Chunk

ROOT = Path(__file__).resolve().parent.parent
BATCH = 10_000
K = 10


def build(
    kind: str, folder: Path, data: bench_data.Dataset, options: dict[str, Any]
) -> VectorStore:
    store = open_store(kind, "recall", dim=data.dim, config=StoreConfig(folder, options=options))
    for start, block in data.iter_base(BATCH):
        rows = range(start, start + len(block))
        store.upsert([Chunk(f"{r}", "t", {"bucket": bench_data.bucket(r)}) for r in rows], block)
        print(f"loaded {start + len(block):,}/{data.n:,}", flush=True)
    flush = getattr(store, "flush", None)  # pgvector builds its index after a load
    if flush is not None:
        flush()
    return store


def measure(
    store: VectorStore, data: bench_data.Dataset, queries: np.ndarray, filtered: bool
) -> dict[str, Any]:
    """Held-out figures: unfiltered, and with ``filtered`` the 1% and 10% filters."""
    out: dict[str, Any] = held_out(store, queries, data.truth()[0])
    if filtered:
        for name, (flt, _) in bench_data.FILTERS.items():
            out[name] = held_out(store, queries, data.truth(name)[0], flt)
    return out


def held_out(
    store: VectorStore,
    queries: np.ndarray,
    truth: np.ndarray,
    where: dict[str, Any] | None = None,
) -> dict[str, float]:
    """recall@10 against the exact neighbours, and latency, one query at a time."""
    times, total = [], 0
    for q, exact in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        hits = store.search(q, k=K, where=where)
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
    p.add_argument("--store", choices=("faiss", "pgvector"), default="faiss")
    p.add_argument("--n", type=int, default=100_000, help="chunks in the collection")
    p.add_argument("--targets", default="0.9,0.95,0.99", help="recall targets, comma-separated")
    p.add_argument("--index", choices=("auto", "hnsw"), default="auto")
    p.add_argument(
        "--store-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a store option the collection is built with and the calibration keeps",
    )
    p.add_argument("--filtered", action="store_true", help="also the 1%% and 10%% filters")
    p.add_argument("--queries", type=int, default=500, help="held-out queries of the dataset")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work-dir", type=Path, default=None, help="where the store is built")
    args = p.parse_args(argv)
    named: dict[str, Any] = parse_store_options(args.store_opt) or {}
    if args.index != "auto":
        named["index"] = args.index
    label = "-".join([args.store, named.get("index", "auto"), fmt_n(args.n)])
    out = args.out or ROOT / "eval" / "results" / f"recall_target-{label}.json"

    data = bench_data.prepare(
        "synthetic", args.n, dim=384, cache_dir=args.cache_dir, queries=args.queries, log=print
    )
    queries = data.queries()
    work = Path(tempfile.mkdtemp(prefix="ragkit-recall-", dir=args.work_dir))
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        store = build(args.store, work, data, named)
        first = {"options": named, "build_s": round(time.perf_counter() - t0, 1)}
        first.update(measure(store, data, queries, args.filtered))
        print(json.dumps(first), flush=True)
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
                "held_out": measure(store, data, queries, args.filtered),
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
        {
            "store": args.store,
            "n": args.n,
            "dim": data.dim,
            "dataset": data.key,
            "built": first,
            "targets": rows,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
