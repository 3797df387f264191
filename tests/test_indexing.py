"""Incremental ingestion on every backend: after each change to the folder, the collection
holds exactly what a fresh ingest of the folder would."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from rag import plugins
from rag.collection import open_collection
from rag.config import Settings
from rag.errors import ConfigError, LockedError

BACKENDS = ["faiss", "chroma", "qdrant", "pgvector"]


def settings_for(data_dir: Path, store: str, **kw: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        store=store,
        embed_model="hashing-384",
        embed_backend="hashing",
        chunk_size=48,
        chunk_overlap=8,
        **kw,
    )  # type: ignore[arg-type]


def snapshot(settings: Settings) -> dict:
    """Everything in the store and in the ingest record, comparable across data dirs."""
    with open_collection(settings) as col:
        chunks = {}
        for batch, vecs in col.store.scan(batch_size=97):
            for c, v in zip(batch, vecs, strict=True):
                chunks[c.id] = (
                    c.text,
                    dict(c.metadata),
                    np.round(v, 4).astype(np.float32).tobytes(),
                )
        records = {r.source: sorted(r.chunk_ids) for r in col.records.all()}
        assert all(r.committed for r in col.records.all())
        assert col.store.count() == len(chunks)
    return {"chunks": chunks, "records": records}


def fresh(folder: Path, tmp_path: Path, store: str) -> dict:
    data = tmp_path / f"fresh-{time.monotonic_ns()}"
    s = settings_for(data, store)
    with open_collection(s, create=True) as col:
        col.ingest([folder])
    return snapshot(s)


def write_corpus(folder: Path, n: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        paras = [
            f"Document {i} paragraph {j}: " + " ".join(f"term{i}_{j}_{w}" for w in range(30))
            for j in range(4)
        ]
        (folder / f"doc{i}.md").write_text(f"# Doc {i}\n\n" + "\n\n".join(paras) + "\n")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> str:
    missing = plugins.get("stores", request.param).missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param}: {missing[0]} is not installed")
        pytest.skip(f"{request.param}: {missing[0]} is not installed")
    return request.param


def test_incremental_equals_fresh(store: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder)
    s = settings_for(tmp_path / "data", store)

    def ingest() -> dict:
        with open_collection(s, create=True) as col:
            return col.ingest([folder]).to_json()

    first = ingest()
    assert first["added"] == 8 and first["embedded"] > 0 and not first["failed"]
    assert snapshot(s) == fresh(folder, tmp_path, store)

    again = ingest()
    assert (again["unchanged"], again["embedded"], again["chunks"], again["added"]) == (8, 0, 0, 0)

    # Modify one file: only its new text is embedded; its old chunks are gone.
    p = folder / "doc3.md"
    p.write_text(p.read_text().replace("paragraph 2:", "paragraph 2 (revised):"))
    changed = ingest()
    assert (changed["updated"], changed["unchanged"]) == (1, 7)
    assert 0 < changed["embedded"] < first["embedded"] / 4
    assert snapshot(s) == fresh(folder, tmp_path, store)

    # Delete one file.
    (folder / "doc5.md").unlink()
    deleted = ingest()
    assert deleted["deleted"] == 1
    assert snapshot(s) == fresh(folder, tmp_path, store)

    # Add one.
    (folder / "new.md").write_text("# New\n\nA brand new document about tide pools and anemones.\n")
    added = ingest()
    assert added["added"] == 1 and added["embedded"] >= 1
    assert snapshot(s) == fresh(folder, tmp_path, store)

    # Rename one: the old path disappears, the new one appears, nothing is re-embedded.
    (folder / "doc1.md").rename(folder / "doc1-renamed.md")
    renamed = ingest()
    assert (renamed["added"], renamed["deleted"], renamed["embedded"]) == (1, 1, 0)
    assert snapshot(s) == fresh(folder, tmp_path, store)

    # Touch without changing: re-read, found identical, nothing written.
    os.utime(folder / "doc0.md", (time.time() + 5, time.time() + 5))
    touched = ingest()
    assert (touched["unchanged"], touched["chunks"], touched["embedded"]) == (8, 0, 0)


def test_cleanup_modes(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder, 3)
    s = settings_for(tmp_path / "data", "faiss")
    with open_collection(s, create=True) as col:
        col.ingest([folder])
        (folder / "doc0.md").unlink()
        assert col.ingest([folder], cleanup="none").deleted == 0
        assert col.ingest([folder], cleanup="per-source").deleted == 0
        assert len(list(col.records.all())) == 3
        assert col.ingest([folder], cleanup="full").deleted == 1
        # Full cleanup is scoped to the paths given: another folder's files stay.
        other = tmp_path / "other"
        write_corpus(other, 2)
        col.ingest([other])
        assert col.ingest([folder]).deleted == 0
        assert len(list(col.records.all())) == 4


def test_chunk_settings_change_rechunks_without_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder, 3)
    s = settings_for(tmp_path / "data", "faiss")
    with open_collection(s, create=True) as col:
        col.ingest([folder])
    s2 = s.with_(chunk_size=96)
    with open_collection(s2, create=True) as col:
        report = col.ingest([folder])
        assert report.updated == 3
    assert snapshot(s2) == snapshot_fresh_with(folder, tmp_path, s2)


def snapshot_fresh_with(folder: Path, tmp_path: Path, s: Settings) -> dict:
    s = s.with_(data_dir=tmp_path / "fresh-rechunk")
    with open_collection(s, create=True) as col:
        col.ingest([folder])
    return snapshot(s)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder, 2)
    s = settings_for(tmp_path / "data", "faiss")
    with open_collection(s, create=True) as a, a.lock():
        b = open_collection(s, create=True)
        with pytest.raises(LockedError, match=r"being written by pid \d+"):
            b.ingest([folder])
        b.close()


def test_a_failing_file_keeps_its_previous_chunks(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder, 2)
    s = settings_for(tmp_path / "data", "faiss")
    with open_collection(s, create=True) as col:
        col.ingest([folder])
        before = {r.source: r.chunk_ids for r in col.records.all()}
        (folder / "doc0.md").write_bytes(b"\x00\x01\x02 binary now")
        report = col.ingest([folder])
        assert [Path(f.source).name for f in report.failed] == ["doc0.md"]
        assert report.deleted == 0
        after = {r.source: r.chunk_ids for r in col.records.all()}
        assert after == before
        shutil.rmtree(folder)
        # A missing root is an error, never "all gone": nothing is deleted.
        with pytest.raises(ConfigError, match="no such file or directory"):
            col.ingest([folder])
        assert {r.source: r.chunk_ids for r in col.records.all()} == before
