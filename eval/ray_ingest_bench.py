"""Ingestion throughput, side by side in one run: the single-process ingest against
``--engine ray`` with one and with two embedding actors, on the same chunks.

The corpus is SciFact abstracts written out as one text file each, as many as it takes to
reach ``--chunks`` chunks in ragkit's default chunking (200 tokens, 32 overlap), with the
default embedding model and backend. Every contender runs ``Collection.ingest`` into a
fresh data directory (FAISS, so that the store costs little and the engines are compared):

* ``local``: the reader thread, the model in this process, the writer thread;
* ``ray-1``, ``ray-2``: a Ray started on this machine for the benchmark (``ray.init`` with
  ``--ray-cpus`` CPUs), one or two actors of one CPU each that read, chunk and embed, this
  process writing. Each run starts its actors and loads the model in each: that start is
  part of the figure, as it is of a real run.

The contenders run ``--repeats`` rounds in rotated order, so that the machine's background
load falls on all of them; the report gives medians, chunks per second and ratios against
``local``. CPU flags are printed beside the figures.

    python -m eval.ray_ingest_bench --dataset ../shared/datasets/scifact --chunks 2000 \\
        --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eval.hnsw_metric import cpu_flags

CONTENDERS = ("local", "ray-1", "ray-2")


def write_corpus(dataset: Path, folder: Path, chunks: int) -> tuple[int, int]:
    """SciFact abstracts, one file each, until their chunks reach ``chunks``; (files,
    chunks) written."""
    from eval.datasets import load_beir
    from rag.chunking import Chunker, ChunkerSettings
    from rag.config import DEFAULT_EMBED_MODEL, default_embed_backend
    from rag.embeddings import load_embedder
    from rag.types import Document

    emb = load_embedder(DEFAULT_EMBED_MODEL, default_embed_backend(None))
    chunker = Chunker.for_embedder(ChunkerSettings(), emb)
    ds = load_beir(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    files = total = 0
    for doc_id in ds.corpus:
        if total >= chunks:
            break
        text = ds.doc_text(doc_id)
        path = folder / f"{doc_id}.txt"
        path.write_text(text + "\n", encoding="utf-8")
        total += len(chunker.chunk([Document(str(path), text + "\n")]))
        files += 1
    return files, total


def one_ingest(name: str, corpus: Path, work: Path) -> dict[str, Any]:
    from rag import Settings, open_collection

    engine = None
    if name.startswith("ray-"):
        from connectors.ray_engine import RayEngine, RaySettings

        engine = RayEngine(RaySettings(workers=int(name.split("-")[1]), num_cpus=1))
    data = work / f"data-{name}"
    shutil.rmtree(data, ignore_errors=True)
    started = time.perf_counter()
    with open_collection(Settings(data_dir=data, collection="bench"), create=True) as col:
        report = col.ingest([corpus], engine=engine)
    seconds = time.perf_counter() - started
    shutil.rmtree(data, ignore_errors=True)
    out = {"seconds": seconds, "chunks": report.chunks, "embedded": report.embedded}
    if engine is not None:
        out["actors"] = len(engine.stats.actors)
    return out


def run(dataset: Path, chunks: int, repeats: int, ray_cpus: int) -> dict[str, Any]:
    # Ray's ports on loopback only (read when Ray is imported).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from rag.config import DEFAULT_EMBED_MODEL, default_embed_backend

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        corpus = work / "corpus"
        files, total = write_corpus(dataset, corpus, chunks)
        ray.init(
            num_cpus=ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=200 * 2**20,
        )
        times: dict[str, list[float]] = {c: [] for c in CONTENDERS}
        runs: list[dict[str, Any]] = []
        for r in range(repeats):
            order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
            for name in order:
                got = one_ingest(name, corpus, work)
                assert got["chunks"] == total, (name, got, total)
                times[name].append(got["seconds"])
                runs.append({"round": r, "contender": name, **got})
                print(f"round {r} {name}: {got}", file=sys.stderr, flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {c: statistics.median(t) for c, t in times.items()}
    return {
        "dataset": str(dataset),
        "files": files,
        "chunks": total,
        "repeats": repeats,
        "model": DEFAULT_EMBED_MODEL,
        "backend": default_embed_backend(None),
        "store": "faiss",
        "ray_cpus": ray_cpus,
        "cpus": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "median_seconds": {c: round(m, 2) for c, m in medians.items()},
        "chunks_per_second": {c: round(total / m, 1) for c, m in medians.items()},
        "vs_local": {c: round(medians["local"] / m, 2) for c, m in medians.items()},
        "runs": runs,
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"{r['chunks']} chunks ({r['files']} SciFact abstracts), {r['model']} on "
        f"{r['backend']}, FAISS; {r['repeats']} rounds, rotated order, medians; "
        f"{r['cpus']} CPUs ({r['cpu_flags']})",
        "",
        "| engine | seconds | chunks/s | speed vs local |",
        "|---|---|---|---|",
    ]
    for c in CONTENDERS:
        lines.append(
            f"| {c} | {r['median_seconds'][c]} | {r['chunks_per_second'][c]} | "
            f"{r['vs_local'][c]}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="a BEIR folder (SciFact)")
    p.add_argument("--chunks", type=int, default=2000, help="chunks to ingest (default 2000)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--ray-cpus", type=int, default=2, help="CPUs the local Ray gets (default 2)")
    p.add_argument(
        "--out", type=Path, default=Path("eval/results/ray_ingest_bench.json"), help="JSON out"
    )
    args = p.parse_args(argv)
    print("CPU flags:", cpu_flags() or "(none of avx2, avx512f, avx512_vnni)")
    result = run(args.dataset, args.chunks, args.repeats, args.ray_cpus)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
