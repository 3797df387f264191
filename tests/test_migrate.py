"""`rag migrate` copies a collection between stores without re-embedding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_indexing import write_corpus

QUERIES = ["paragraph 2 term3_2_7", "Document 5 paragraph 1", "term0_0_0 term0_0_1", "Doc 7"]


def rag(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "apps.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def top(env: dict[str, str], store: str) -> list[list[tuple[float, str]]]:
    """Each query's whole ranking as (score, id), ties in id order: stores may order equal scores
    (common with the hashing embedder) differently."""
    out = []
    for q in QUERIES:
        hits = json.loads(rag(env, "search", q, "--store", store, "--k", "500", "--json").stdout)[
            "hits"
        ]
        out.append(sorted((-round(h["score"], 4), h["id"]) for h in hits))
    return out


@pytest.mark.parametrize(("source", "target"), [("faiss", "pgvector"), ("chroma", "qdrant")])
def test_migrate_preserves_counts_and_results(
    hashing_env: dict, tmp_path: Path, source: str, target: str
) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder, 10)
    env = dict(hashing_env, RAG_CHUNK_SIZE="48", RAG_CHUNK_OVERLAP="8")
    ingest = json.loads(rag(env, "ingest", str(folder), "--store", source, "--json").stdout)
    before = top(env, source)

    out = json.loads(rag(env, "migrate", "--from", source, "--to", target, "--json").stdout)
    assert out["copied"] == out["source_count"] == out["target_count"] == ingest["total_chunks"]
    assert top(env, target) == before

    status = json.loads(rag(env, "status", "--store", target, "--json").stdout)
    assert (
        status["embedder"]["model"] == "hashing-384" and status["chunks"] == ingest["total_chunks"]
    )
    # The source store's options and calibration stay behind (another kind of store).
    assert status["store_options"] == {}
    # The ingest record travelled too: the target is up to date, nothing to embed.
    again = json.loads(rag(env, "ingest", str(folder), "--store", target, "--json").stdout)
    assert (again["unchanged"], again["embedded"]) == (10, 0)
    # Migrating again is idempotent.
    assert (
        json.loads(rag(env, "migrate", "--from", source, "--to", target, "--json").stdout)[
            "target_count"
        ]
        == ingest["total_chunks"]
    )
