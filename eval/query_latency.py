"""Query latency of a warm process: embedding the query plus searching N chunks.

What ``rag search`` costs once the process is up, measured through the same retriever that
serves ``rag search``, ``rag ask`` and the UI: ``Collection.search(text)`` embeds the text
with the collection's backend and searches the store. Each configuration gets a FAISS
collection of ``--n`` chunks (``--index`` flat, hnsw or both). The stored vectors are the
benchmark's synthetic vectors (``eval/bench_data.py``, clustered and calibrated against
all-MiniLM-L6-v2 embeddings; embedding 100k real passages would take this machine hours and
does not change what is timed: an exact scan costs the same on any vectors, HNSW about the
same on vectors like these). The queries are real text, SciFact's claims, embedded one at a
time as a user's would be. The first ``--warmup`` queries are not timed.

    python -m eval.query_latency --n 100000 --index flat,hnsw --backends torch,onnx,onnx-int8
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
from eval.bench import DEFAULT_CACHE, DEFAULT_SCIFACT
from eval.datasets import load_beir
from eval.metrics import percentiles
from eval.record import write_result
from rag.config import Settings
from rag.types import Chunk

ROOT = Path(__file__).resolve().parent.parent
BATCH = 10_000


def build(settings: Settings, vectors: np.ndarray) -> None:
    """A collection of ``len(vectors)`` chunks: one real document ingested (which records
    the collection's embedder), then the vectors written straight to its store."""
    from rag.collection import open_collection

    docs = settings.data_dir / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "readme.md").write_text("# Latency\n\nA collection built to time queries.\n")
    with open_collection(settings, create=True) as col:
        col.ingest([docs])
        store = col.store
        for start in range(0, len(vectors), BATCH):
            block = vectors[start : start + BATCH]
            chunks = [
                Chunk(f"c{start + i:07d}", f"passage {start + i}", {"source": f"doc{start + i}"})
                for i in range(len(block))
            ]
            store.upsert(chunks, np.ascontiguousarray(block, dtype=np.float32))


def measure(settings: Settings, queries: list[str], warmup: int) -> dict[str, Any]:
    from rag.collection import open_collection

    with open_collection(settings) as col:
        t0 = time.perf_counter()
        col.search(queries[0], k=10)  # loads the model and opens the index
        first_s = time.perf_counter() - t0
        for q in queries[1 : warmup + 1]:
            col.search(q, k=10)
        total, embed = [], []
        embedder, retriever = col.embedder, col.retriever
        for q in queries[warmup + 1 :]:
            # What Collection.search does, in its two steps, each timed.
            t0 = time.perf_counter()
            vec = embedder.embed_query(q)
            t1 = time.perf_counter()
            retriever.search(q, k=10, vector=vec)
            t2 = time.perf_counter()
            embed.append((t1 - t0) * 1e3)
            total.append((t2 - t0) * 1e3)
    pt = percentiles(total, (50, 95, 99))
    pe = percentiles(embed, (50, 99))
    return {
        "queries": len(total),
        "first_query_s": round(first_s, 2),
        **{f"{k}_ms": round(v, 2) for k, v in pt.items()},
        "embed_p50_ms": round(pe["p50"], 2),
        "embed_p99_ms": round(pe["p99"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.query_latency", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--n", type=int, default=100_000, help="chunks in the collection")
    p.add_argument("--index", default="flat,hnsw", help="FAISS index kinds, comma-separated")
    p.add_argument("--backends", default="torch,onnx,onnx-int8", help="embedding backends")
    p.add_argument("--queries", type=int, default=500, help="timed queries per configuration")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument(
        "--dataset", type=Path, default=DEFAULT_SCIFACT, help="BEIR folder for query texts"
    )
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "query_latency.json")
    args = p.parse_args(argv)

    ds = load_beir(args.dataset)
    texts = list(ds.queries.values())
    need = args.queries + args.warmup + 1
    queries = [texts[i % len(texts)] for i in range(need)]
    data = bench_data.prepare(
        "synthetic", args.n, dim=384, cache_dir=args.cache_dir, queries=100, log=print
    )
    vectors = np.load(data.base_path, mmap_mode="r")
    results = []
    work = Path(tempfile.mkdtemp(prefix="ragkit-qlat-"))
    try:
        for index in [s.strip() for s in args.index.split(",") if s.strip()]:
            for backend in [s.strip() for s in args.backends.split(",") if s.strip()]:
                settings = Settings(
                    data_dir=work / f"{index}-{backend}",
                    collection="latency",
                    store="faiss",
                    store_options={"index": index},
                    embed_backend=backend,
                )
                t0 = time.perf_counter()
                build(settings, vectors)
                row = {
                    "index": index,
                    "backend": backend,
                    "n": args.n,
                    "build_s": round(time.perf_counter() - t0, 1),
                }
                row.update(measure(settings, queries, args.warmup))
                results.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(work / f"{index}-{backend}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result(args.out, "eval.query_latency", argv, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
