"""Store options are saved with the collection: a later open (a search, ``rag serve``) uses
the index the collection was built with, unless it names an option itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.collection import open_collection
from rag.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings(data_dir: Path, **kw: Any) -> Settings:
    return Settings(
        data_dir=data_dir, embed_model="hashing-256", embed_backend="hashing", store="faiss", **kw
    )


def test_a_collection_reopens_with_the_index_it_was_built_with(tmp_path: Path) -> None:
    built = {"index": "hnsw", "hnsw_m": 8}
    with open_collection(settings(tmp_path, store_options=built), create=True) as col:
        col.ingest([ROOT / "data"])
        expected = [h.id for h in col.search("vector store", k=5)]
    manifest = json.loads(next(tmp_path.rglob("manifest.json")).read_text())
    assert manifest["store_options"] == built

    with open_collection(settings(tmp_path)) as col:
        assert col.store_options == built
        assert col.status()["store_options"] == built
        assert col.store._opts["index"] == "hnsw"
        assert [h.id for h in col.search("vector store", k=5)] == expected

    # An option named at open time wins for that open, and is not saved by a search.
    with open_collection(settings(tmp_path, store_options={"ef_search": 128})) as col:
        assert col.store_options == {**built, "ef_search": 128}
        assert col.store._opts["ef_search"] == 128
        col.search("vector store", k=5)
    assert json.loads(next(tmp_path.rglob("manifest.json")).read_text())["store_options"] == built


def test_an_ingest_with_new_options_records_them(tmp_path: Path) -> None:
    with open_collection(settings(tmp_path), create=True) as col:
        col.ingest([ROOT / "data"])
    assert json.loads(next(tmp_path.rglob("manifest.json")).read_text())["store_options"] == {}
    with open_collection(settings(tmp_path, store_options={"index": "hnsw"})) as col:
        col.ingest([ROOT / "data"])
        assert col.store._opts["index"] == "hnsw"
    manifest = json.loads(next(tmp_path.rglob("manifest.json")).read_text())
    assert manifest["store_options"] == {"index": "hnsw"}
    with open_collection(settings(tmp_path)) as col:
        assert col.store._opts["index"] == "hnsw"
