"""Qdrant's in-process engine (qdrant-edge): when to build HNSW during a bulk load, and
filtered HNSW with and without ACORN.

Two measurements behind choices in ``vectorstores/qdrant_engines.py``, on the benchmark's
synthetic vectors (``eval/bench_data.py``, cached):

* build policy: ``--n`` vectors upserted through ``QdrantStore`` in batches of 10,000 with
  HNSW built every 20k points (``fixed``, the adapter's former rule), at steps growing with
  the collection (``grow``, the rule now), or once at the end (``end``); each policy in a
  process of its own, for its peak RSS (``VmHWM``), in the order given.
* filtered search: ``--filter-n`` vectors, the benchmark's 10% filter (``bucket < 10``,
  spread evenly over the rows), recall@10 against the filtered exact top 10 and the median
  latency, ACORN on and off, at Qdrant's default ef.

    python -m eval.qdrant_edge --n 400000 --filter-n 100000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval import bench_data
from eval.bench import DEFAULT_CACHE
from eval.bench_worker import id_row, row_id
from eval.record import write_result
from rag.types import Chunk

ROOT = Path(__file__).resolve().parent.parent
BATCH = 10_000


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _load(ds: bench_data.Dataset, folder: Path) -> tuple[Any, float]:
    from rag.store import StoreConfig
    from vectorstores.qdrant import QdrantStore

    store = QdrantStore("c", dim=ds.dim, config=StoreConfig(folder, options={"engine": "edge"}))
    start = time.perf_counter()
    for first, vecs in ds.iter_base(BATCH):
        rows = range(first, first + len(vecs))
        store.upsert([Chunk(row_id(r), "", {"bucket": bench_data.bucket(r)}) for r in rows], vecs)
    return store, start


def child_policy(ds: bench_data.Dataset, policy: str, folder: Path) -> dict[str, Any]:
    from vectorstores import qdrant_engines as engines

    if policy == "fixed":
        engines.AUTO_OPTIMIZE_GROWTH = 0.0
    elif policy == "end":
        engines.AUTO_OPTIMIZE_BYTES = 2**62
    builds = 0
    real = engines.EdgeEngine.optimize

    def counted(self: Any) -> bool:
        nonlocal builds
        builds += 1
        return bool(real(self))

    engines.EdgeEngine.optimize = counted  # type: ignore[method-assign]
    store, start = _load(ds, folder)
    loaded = time.perf_counter() - start
    store.close()  # builds what is left
    return {
        "policy": policy,
        "n": ds.n,
        "load_s": round(loaded, 1),
        "total_s": round(time.perf_counter() - start, 1),
        "builds": builds,
        "peak_rss_mb": _hwm_mb(),
    }


def child_filtered(ds: bench_data.Dataset, folder: Path, queries: int) -> list[dict[str, Any]]:
    import qdrant_edge as qe

    flt, _ = bench_data.FILTERS["10%"]
    truth, _ = ds.truth("10%")
    qs = ds.queries()[:queries]
    store, _ = _load(ds, folder)
    store.optimize()
    engine = store._engine
    out = []
    try:
        for acorn in (False, True):
            engine._filtered_params = qe.SearchParams(acorn=qe.AcornSearchParams(enable=acorn))
            store.search(qs[0], k=10, where=flt)  # warm
            recall, times = [], []
            for i, q in enumerate(qs):
                t0 = time.perf_counter()
                hits = store.search(q, k=10, where=flt)
                times.append(time.perf_counter() - t0)
                found = {id_row(h.id) for h in hits}
                recall.append(len(found & set(truth[i, :10].tolist())) / 10)
            out.append(
                {
                    "acorn": acorn,
                    "n": ds.n,
                    "recall_at_10": round(float(np.mean(recall)), 4),
                    "p50_ms": round(float(np.median(times)) * 1000, 3),
                }
            )
    finally:
        store.close()
    return out


def _child(argv: list[str]) -> int:
    what, key, folder = argv[0], argv[1], Path(argv[2])
    info = json.loads((folder.parent / "datasets.json").read_text())[key]
    ds = bench_data.Dataset(key, info["name"], info["n"], info["dim"], Path(info["folder"]), {})
    if what == "filtered":
        result: Any = child_filtered(ds, folder, int(argv[3]))
    else:
        result = child_policy(ds, what, folder)
    print(json.dumps(result))
    return 0


def _run_child(args: list[str]) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "eval.qdrant_edge", "--child", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"qdrant_edge child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m eval.qdrant_edge", description=__doc__.split("\n")[0]
    )
    p.add_argument("--n", type=int, default=400_000, help="vectors for the build policies")
    p.add_argument(
        "--policies", default="fixed,grow,end", help="comma-separated, run in this order"
    )
    p.add_argument("--filter-n", type=int, default=100_000, help="vectors for the filtered search")
    p.add_argument("--filter-queries", type=int, default=100)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "qdrant_edge.json")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ragkit-qdrant-edge-"))
    try:
        datasets = {}
        for n in sorted({args.n, args.filter_n}):
            ds = bench_data.prepare("synthetic", n, dim=384, cache_dir=args.cache_dir, queries=500)
            datasets[ds.key] = {"name": ds.name, "n": ds.n, "dim": ds.dim, "folder": str(ds.folder)}
        (work / "datasets.json").write_text(json.dumps(datasets))
        keys = {info["n"]: key for key, info in datasets.items()}
        policies = []
        for policy in args.policies.split(","):
            shutil.rmtree(work / "store", ignore_errors=True)
            row = _run_child([policy, keys[args.n], str(work / "store")])
            print(json.dumps(row), flush=True)
            policies.append(row)
        shutil.rmtree(work / "store", ignore_errors=True)
        filtered = _run_child(
            ["filtered", keys[args.filter_n], str(work / "store"), str(args.filter_queries)]
        )
        for row in filtered:
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result(args.out, "eval.qdrant_edge", argv, {"policies": policies, "filtered": filtered})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
