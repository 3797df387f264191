"""Ingestion speed, side by side in one run: raw encoding, `rag ingest`, a LangChain
pipeline, and an unchanged re-ingest.

On the same corpus (SciFact abstracts written out as one text file each), for every
embedding backend:

* ``encode``: the embedder alone on the final chunk texts (what ragkit's chunker produced),
  in batches of 256: the ceiling for ingestion throughput;
* ``ingest``: ``Collection.ingest`` (what ``rag ingest`` runs) into a fresh data directory:
  walking, reading, chunking, embedding and writing to FAISS;
* ``reingest``: the same ingest again, with nothing changed;

and once, when ``langchain-community`` and ``langchain-huggingface`` are installed
(``pip install 'ragkit[compare]'``), an equivalent LangChain pipeline: a plain loop reading
the files, ``RecursiveCharacterTextSplitter.from_huggingface_tokenizer`` with the same chunk
size and overlap in the same tokenizer's tokens, ``HuggingFaceEmbeddings`` on the same model
(sentence-transformers on torch, normalised), ``FAISS.from_documents``.

Models are loaded before any timing. Each measurement is repeated (``--repeats``) with the
order of the contenders rotated between rounds, so that the machine's background noise falls
on all of them; the report gives medians and ratios.

    python -m eval.ingest_bench --dataset ../shared/datasets/scifact --docs 600 --repeats 3
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval.datasets import load_beir
from eval.quantization import cpu_info
from rag.chunking import Chunker, ChunkerSettings
from rag.collection import open_collection
from rag.config import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EMBED_MODEL,
    Settings,
    default_embed_backend,
)
from rag.embeddings import load_embedder
from rag.embeddings.models import resolve_model
from rag.types import Document


def write_corpus(dataset: Path, folder: Path, docs: int) -> list[Path]:
    ds = load_beir(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc_id in list(ds.corpus)[:docs]:
        p = folder / f"{doc_id}.txt"
        p.write_text(ds.doc_text(doc_id) + "\n", encoding="utf-8")
        paths.append(p)
    return paths


def final_chunks(paths: list[Path], backend: str, model: str) -> list[str]:
    emb = load_embedder(model, backend)
    chunker = Chunker.for_embedder(ChunkerSettings(DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_OVERLAP), emb)
    texts: list[str] = []
    for p in paths:
        texts.extend(
            c.text for c in chunker.chunk([Document(str(p), p.read_text(encoding="utf-8"))])
        )
    return texts


def time_encode(backend: str, model: str, texts: list[str]) -> float:
    emb = load_embedder(model, backend)
    t0 = time.perf_counter()
    for start in range(0, len(texts), 256):
        emb.embed(texts[start : start + 256])
    return time.perf_counter() - t0


def time_ingest(backend: str, model: str, corpus: Path, work: Path) -> tuple[float, float, int]:
    """Seconds of a first ingest and of an unchanged re-ingest, and the chunks written."""
    data_dir = work / f"ingest-{backend}"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = Settings(data_dir=data_dir, embed_model=model, embed_backend=backend)
    with open_collection(settings, create=True) as col:
        t0 = time.perf_counter()
        report = col.ingest([corpus])
        first = time.perf_counter() - t0
    with open_collection(settings) as col:
        t0 = time.perf_counter()
        again = col.ingest([corpus])
        second = time.perf_counter() - t0
    assert again.embedded == 0 and again.unchanged == report.added
    shutil.rmtree(data_dir, ignore_errors=True)
    return first, second, report.chunks


def langchain_pipeline(model: str) -> Callable[[list[Path]], tuple[float, int]] | None:
    """The LangChain pipeline, its model loaded; ``None`` when LangChain's packages are
    missing."""
    try:
        from langchain_community.vectorstores import FAISS
        from langchain_core.documents import Document as LCDocument
        from langchain_huggingface import HuggingFaceEmbeddings
        from langchain_text_splitters import RecursiveCharacterTextSplitter
        from transformers import AutoTokenizer
    except ImportError:
        return None
    _, location = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(location)
    embeddings = HuggingFaceEmbeddings(
        model_name=location,
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True},
    )
    embeddings.embed_documents(["warm up"])
    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        tokenizer, chunk_size=DEFAULT_CHUNK_SIZE, chunk_overlap=DEFAULT_CHUNK_OVERLAP
    )

    def run(paths: list[Path]) -> tuple[float, int]:
        t0 = time.perf_counter()
        docs = [
            LCDocument(page_content=p.read_text(encoding="utf-8"), metadata={"source": str(p)})
            for p in paths
        ]
        chunks = splitter.split_documents(docs)
        FAISS.from_documents(chunks, embeddings)
        return time.perf_counter() - t0, len(chunks)

    return run


def run(
    dataset: Path,
    *,
    docs: int,
    repeats: int,
    backends: list[str],
    model: str,
    work: Path,
    langchain: bool = True,
    encode: bool = True,
) -> dict[str, Any]:
    corpus = work / "corpus"
    paths = write_corpus(dataset, corpus, docs)
    texts = final_chunks(paths, backends[0], model)
    for b in backends:  # load every model (and export ONNX graphs) before timing anything
        load_embedder(model, b).embed(texts[:8])
    lc = langchain_pipeline(model) if langchain else None
    samples: dict[str, dict[str, list[float]]] = {
        b: {"encode": [], "ingest": [], "reingest": []} for b in backends
    }
    lc_samples: list[float] = []
    lc_chunks = 0
    chunks_written = 0
    contenders = [*backends, *(["langchain"] if lc else [])]
    for r in range(repeats):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for name in order:
            print(f"round {r + 1}/{repeats}: {name}", file=sys.stderr, flush=True)
            if name == "langchain":
                seconds, lc_chunks = lc(paths)  # type: ignore[misc]
                lc_samples.append(seconds)
                continue
            if encode:
                samples[name]["encode"].append(time_encode(name, model, texts))
            first, again, chunks_written = time_ingest(name, model, corpus, work)
            samples[name]["ingest"].append(first)
            samples[name]["reingest"].append(again)
    n = len(texts)
    out: dict[str, Any] = {
        "dataset": str(dataset),
        "documents": len(paths),
        "chunks": n,
        "chunks_written": chunks_written,
        "repeats": repeats,
        "model": model,
        "host": {**cpu_info(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "backends": {},
    }
    for b in backends:
        ing, re_ = (statistics.median(samples[b][k]) for k in ("ingest", "reingest"))
        enc = statistics.median(samples[b]["encode"]) if encode else None
        out["backends"][b] = {
            "encode_seconds": round(enc, 2) if enc else None,
            "ingest_seconds": round(ing, 2),
            "reingest_seconds": round(re_, 3),
            "encode_per_s": round(n / enc, 1) if enc else None,
            "ingest_per_s": round(chunks_written / ing, 1),
            "ingest_vs_encode": round((chunks_written / ing) / (n / enc), 3) if enc else None,
            "reingest_vs_ingest": round(re_ / ing, 4),
            "samples": samples[b],
        }
    if "torch" in out["backends"]:
        base = out["backends"]["torch"]["ingest_per_s"]
        for b in backends:
            out["backends"][b]["ingest_vs_torch"] = round(
                out["backends"][b]["ingest_per_s"] / base, 2
            )
    if lc_samples:
        lc_s = statistics.median(lc_samples)
        out["langchain"] = {
            "seconds": round(lc_s, 2),
            "chunks": lc_chunks,
            "per_s": round(lc_chunks / lc_s, 1),
            "samples": lc_samples,
        }
        for b in backends:
            out["backends"][b]["vs_langchain"] = round(
                lc_s / out["backends"][b]["ingest_seconds"], 2
            )
    return out


def markdown(r: dict[str, Any]) -> str:
    host = r.get("host", {})
    lines = [
        f"CPU: {host.get('cpu', '?')}; flags {' '.join(host.get('isa', [])) or '-'}; "
        f"{host.get('logical_cpus', '?')} logical CPUs; load average {host.get('load_average_1m')}",
        f"{r['documents']} SciFact abstracts → {r['chunks']} chunks; medians of {r['repeats']} rounds",
        "",
        "| backend | encode chunks/s | ingest chunks/s | ingest ÷ encode | × torch | × LangChain | unchanged re-ingest |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, m in r["backends"].items():
        lines.append(
            f"| {b} | {m['encode_per_s'] or '-'} | {m['ingest_per_s']} | "
            f"{m['ingest_vs_encode'] or '-'} | "
            f"{m.get('ingest_vs_torch', '')} | {m.get('vs_langchain', '')} | "
            f"{m['reingest_seconds']} s ({100 * m['reingest_vs_ingest']:.2f}%) |"
        )
    if "langchain" in r:
        lc = r["langchain"]
        lines.append(
            f"| LangChain (torch) | | {lc['per_s']} ({lc['chunks']} chunks) | | | 1.00 | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", type=Path, required=True, help="a BEIR folder (corpus.jsonl), e.g. SciFact"
    )
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--backends",
        default="torch,default",
        help="comma-separated embedding backends; 'default' is the one a new collection gets "
        "here (rag.config.default_embed_backend)",
    )
    p.add_argument("--model", default=DEFAULT_EMBED_MODEL)
    p.add_argument("--no-langchain", action="store_true")
    p.add_argument(
        "--no-encode",
        action="store_true",
        help="time only the ingests (not the encoder alone on the final chunks): half the time",
    )
    p.add_argument("--out", type=Path, default=Path("eval/results/ingest_bench.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ragkit-ingest-bench-") as tmp:
        result = run(
            args.dataset,
            docs=args.docs,
            repeats=args.repeats,
            backends=[
                default_embed_backend(args.model) if b == "default" else b
                for b in args.backends.split(",")
            ],
            model=args.model,
            work=Path(tmp),
            langchain=not args.no_langchain,
            encode=not args.no_encode,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
