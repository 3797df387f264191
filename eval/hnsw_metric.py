"""FAISS HNSW over unit vectors: an inner-product graph against an L2 graph, side by side.

For unit vectors squared L2 distance ranks exactly as inner product does, so the two graphs
answer the same question; HNSW's neighbour selection assumes a metric, and inner product is
not one. This builds both graphs on the same vectors with the same M and efConstruction
(the vector-store sweep's synthetic set, :mod:`eval.bench_data`, cached) and measures
recall@10 against the exact answer over a sweep of efSearch, with build time and query
latency. Each (size, metric) result is appended to the output JSONL as it ends, so a
stopped run resumes.

    python -m eval.hnsw_metric --sizes 100k,1m --m 16 --ef-construction 100 \\
        --out eval/results/hnsw_metric.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench_data import prepare

METRICS = ("ip", "l2")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    flags = set(text.split())
    return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in flags)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def build(base: Any, metric: str, m: int, ef_construction: int) -> tuple[Any, float]:
    import faiss

    kind = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(base.shape[1], m, kind)
    index.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    for start in range(0, base.shape[0], 50_000):
        index.add(np.ascontiguousarray(base[start : start + 50_000], dtype=np.float32))
    return index, time.perf_counter() - started


def measure(index: Any, queries: np.ndarray, truth: np.ndarray, ef: int) -> dict[str, float]:
    import faiss

    params = faiss.SearchParametersHNSW(efSearch=max(ef, 10))
    index.search(queries[:20], 10, params=params)  # warm
    hits, times = 0, []
    for q, t in zip(queries, truth, strict=True):
        started = time.perf_counter()
        _, ids = index.search(q.reshape(1, -1), 10, params=params)
        times.append(time.perf_counter() - started)
        hits += len(set(ids[0].tolist()) & set(t[:10].tolist()))
    return {
        "ef_search": ef,
        "recall@10": round(hits / (10 * len(queries)), 4),
        "p50_ms": round(statistics.median(times) * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100k", help="comma-separated sizes (default 100k)")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--ef-search", default="16,32,64,128,256")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--cache-dir", type=Path, default=Path(".rag/bench/cache"))
    p.add_argument("--out", type=Path, default=Path("eval/results/hnsw_metric.jsonl"))
    a = p.parse_args(argv)
    done = set()
    if a.out.exists():
        for line in a.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["n"], r["metric"], r["m"], r["ef_construction"]))
    print(f"CPU flags: {cpu_flags()}", flush=True)
    efs = [int(x) for x in a.ef_search.split(",")]
    for size in (parse_size(s) for s in a.sizes.split(",")):
        data = prepare("synthetic", size, dim=384, cache_dir=a.cache_dir, queries=a.queries)
        base, queries = data.base(), data.queries()
        truth, _ = data.truth()
        for metric in METRICS:
            if (size, metric, a.m, a.ef_construction) in done:
                print(f"{size:,} {metric}: done before", flush=True)
                continue
            index, seconds = build(base, metric, a.m, a.ef_construction)
            rows = [measure(index, queries, truth, ef) for ef in efs]
            record = {
                "n": size,
                "metric": metric,
                "m": a.m,
                "ef_construction": a.ef_construction,
                "build_s": round(seconds, 1),
                "sweep": rows,
                "cpu": cpu_flags(),
                "time": time.strftime("%Y-%m-%d %H:%M"),
            }
            a.out.parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as f:
                f.write(json.dumps(record) + "\n")
            line = ", ".join(f"ef {r['ef_search']}: {r['recall@10']}" for r in rows)
            print(f"{size:,} {metric}: built in {seconds:.0f} s; recall@10 {line}", flush=True)
            del index
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
