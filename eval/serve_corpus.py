"""The collection :mod:`eval.serve_bench` loads: passages of a BEIR corpus (SciFact's
abstracts) in FAISS HNSW, built incrementally.

Passages are titles, sentences, and two- and three-sentence windows of each abstract (at
most :data:`MAX_PASSAGE_CHARS` characters, each text once), taken in a shuffled order fixed
by a seed. The first N are written as Markdown files of :data:`PER_FILE` sections, one
passage a section (ragkit's chunker makes each section one chunk), and ingested with
``Collection.ingest``: a build that is stopped resumes where it stopped, and a larger
collection in the same data directory takes the vectors a smaller one embedded from the
embedding cache.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PER_FILE = 1000
MAX_PASSAGE_CHARS = 600
#: FAISS HNSW as the benchmark builds and serves it (the store's defaults, spelled out).
HNSW = {"index": "hnsw", "hnsw_m": 32, "ef_construction": 200, "ef_search": 64}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
_MARKUP = re.compile(r"^[#`~=\-*+>|\s]+")  # a section's first line must stay a paragraph


def passages(corpus: Path) -> list[tuple[str, str]]:
    """``(doc id, passage)``: titles, sentences, and two- and three-sentence windows of each
    abstract, at most :data:`MAX_PASSAGE_CHARS` long, each text once, in corpus order."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            sents = [
                s.strip() for s in _SENTENCE.split(doc.get("text") or "") if len(s.strip()) > 20
            ]
            texts = [doc.get("title") or "", *sents]
            for width in (2, 3):
                texts += [" ".join(sents[i : i + width]) for i in range(len(sents) - width + 1)]
            for text in texts:
                text = _MARKUP.sub("", " ".join(text.split()))
                if 20 < len(text) <= MAX_PASSAGE_CHARS and text not in seen:
                    seen.add(text)
                    out.append((str(doc.get("_id", "")), text))
    return out


def write_corpus(corpus: Path, folder: Path, n: int, seed: int) -> int:
    """The first ``n`` passages (in a shuffled order fixed by ``seed``) as Markdown files of
    :data:`PER_FILE` sections under ``folder``; files already there are left as they are."""
    items = passages(corpus)
    if len(items) < n:
        raise SystemExit(f"{corpus} gives {len(items):,} passages; ask for --chunks {len(items)}")
    order = np.random.default_rng(seed).permutation(len(items))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, n, PER_FILE)):
        path = folder / f"part{part:04d}.md"
        if path.exists():
            continue
        text = "".join(
            f"## {items[j][0]}\n\n{items[j][1]}\n\n" for j in order[start : start + PER_FILE]
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # a file is there whole or not at all
    return (n + PER_FILE - 1) // PER_FILE


def build(
    data_dir: Path,
    corpus: Path,
    chunks: int,
    *,
    name: str,
    seed: int = 0,
    embed_model: str | None = None,
    embed_backend: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Builds (or completes) collection ``name`` of ``chunks`` passages of ``corpus`` in
    ``data_dir``; returns what it holds."""
    from rag.collection import open_collection
    from rag.config import Settings

    folder = data_dir / "corpus" / name
    files = write_corpus(corpus, folder, chunks, seed)
    settings = Settings(
        data_dir=data_dir,
        collection=name,
        store_options=HNSW,
        embed_model=embed_model,
        embed_backend=embed_backend,
    )
    started = time.perf_counter()
    shown = [0.0]

    def progress(p: Any) -> None:
        now = time.perf_counter()
        if now - shown[0] < 10 and p.files_done < p.files_total:
            return
        shown[0] = now
        rate = p.embedded / p.embed_seconds if p.embed_seconds > 0 else 0.0
        left = (p.files_total - p.files_done) * PER_FILE  # about: a file holds PER_FILE chunks
        eta = f", about {left / rate / 60:.0f} min left" if rate > 0 and left else ""
        log(
            f"build: {p.files_done}/{p.files_total} files, {p.chunks:,} chunks embedded or "
            f"cached ({rate:.0f}/s embedding){eta}"
        )

    log(f"build: {name}: {chunks:,} passages in {files} files under {folder}")
    with open_collection(settings, create=True) as col:
        report = col.ingest([folder], progress=progress)
        count = col.store.count()
        info = {
            "name": name,
            "chunks": count,
            "embed_model": col.embed_model,
            "embed_backend": col.embed_backend,
            "store": "faiss " + " ".join(f"{k}={v}" for k, v in HNSW.items()),
        }
    log(
        f"build: {count:,} chunks ({report.embedded:,} embedded now, {report.cached:,} from the "
        f"cache, {report.unchanged} files unchanged) in {time.perf_counter() - started:.0f} s"
    )
    if count != chunks:
        log(f"build: WARNING: {count:,} chunks, not {chunks:,}")
    return info
