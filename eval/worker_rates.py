"""Per-worker rates for planning a large ingest (docs/scale.md): chunks embedded per second
by one CPU for each embedding backend, and chunks written per second by the FAISS store,
measured side by side in one run on the same chunks.

One CPU: the process pins itself to a single core (``os.sched_setaffinity``) and every
backend runs one thread (ONNX Runtime's intra-op threads, torch's threads), which is what
one Ray embedding actor with ``num_cpus=1`` gets. The chunks are SciFact abstracts cut by
ragkit's chunker in the model's tokens (200-token chunks, 32 overlap), in batches of 32;
each backend embeds them ``--repeats`` times in rotated order and the median is reported.

    python -m eval.worker_rates --dataset ../shared/datasets/scifact --chunks 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.hnsw_metric import cpu_flags

BACKENDS = ("onnx-int8", "onnx", "torch")


def one_cpu() -> int:
    """Pins this process to one CPU and one thread per library; returns the CPU."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})
    os.environ["RAG_ONNX_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return cpu


def chunk_texts(dataset: Path, n: int) -> list[str]:
    from eval.datasets import load_beir
    from rag.chunking import Chunker, ChunkerSettings
    from rag.embeddings import load_embedder
    from rag.types import Document

    ds = load_beir(dataset)
    chunker = Chunker.for_embedder(
        ChunkerSettings(200, 32), load_embedder("sentence-transformers/all-MiniLM-L6-v2", "onnx")
    )
    texts: list[str] = []
    for doc_id in ds.corpus:
        texts += [c.text for c in chunker.chunk([Document(doc_id, ds.doc_text(doc_id))])]
        if len(texts) >= n:
            break
    return texts[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--chunks", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--out", type=Path, default=Path("eval/results/worker_rates.json"))
    a = p.parse_args(argv)
    cpu = one_cpu()
    from rag.embeddings import load_embedder
    from rag.store import StoreConfig
    from rag.types import Chunk
    from vectorstores.faiss import FaissStore

    texts = chunk_texts(a.dataset, a.chunks)
    backends = a.backends.split(",")
    models = {b: load_embedder("sentence-transformers/all-MiniLM-L6-v2", b) for b in backends}
    for m in models.values():
        m.embed(texts[:8])  # warm
    times: dict[str, list[float]] = {b: [] for b in backends}
    for r in range(a.repeats):
        for b in backends[r % len(backends) :] + backends[: r % len(backends)]:
            started = time.perf_counter()
            for i in range(0, len(texts), 32):
                models[b].embed(texts[i : i + 32])
            times[b].append(time.perf_counter() - started)
    rates = {b: round(len(texts) / statistics.median(t), 2) for b, t in times.items()}
    vecs = models[backends[0]].embed(texts)
    writes = []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            store = FaissStore("w", dim=vecs.shape[1], config=StoreConfig(Path(d)), create=True)
            rows = np.tile(vecs, (max(1, 20_000 // len(vecs)), 1))
            started = time.perf_counter()
            for i in range(0, len(rows), 512):
                part = rows[i : i + 512]
                store.upsert(
                    [Chunk(f"c{i + j}", "x" * 800, {"n": i + j}) for j in range(len(part))], part
                )
            writes.append(len(rows) / (time.perf_counter() - started))
            store.close()
    result: dict[str, Any] = {
        "command": "python -m eval.worker_rates "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu": cpu,
        "cpu_flags": cpu_flags(),
        "chunks": len(texts),
        "mean_chars": round(sum(map(len, texts)) / len(texts)),
        "embed_chunks_per_s_one_cpu": rates,
        "faiss_writes_per_s_one_cpu": round(statistics.median(writes)),
        "load_average_1m": os.getloadavg()[0],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
