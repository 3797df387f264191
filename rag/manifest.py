"""How a collection was built, saved beside it; and the collections a data directory holds.

Files under the data directory::

    collections/<store>/<name>/manifest.json   how the collection was built
    collections/<store>/<name>/records.sqlite  what each source contributed (incremental ingest)
    collections/<store>/<name>/ingest.lock     held by the ingest in progress
    stores/<store>/...                         the embedded engines' own files
    cache/embeddings.sqlite                    vectors by (model, text hash)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.config import Settings
from rag.errors import ConfigError
from rag.records import RecordStore

MANIFEST_VERSION = 1


@dataclass
class Manifest:
    """How a collection was built; saved beside it and checked on every open."""

    name: str
    store: str
    embed_model: str
    embed_backend: str
    dim: int
    max_tokens: int
    chunk_size: int
    chunk_overlap: int
    created: float = field(default_factory=time.time)
    versions: dict[str, str] = field(default_factory=dict)
    last_ingest: dict[str, Any] | None = None
    format: int = MANIFEST_VERSION
    #: The store options the collection was built with (``--store-opt index=hnsw``): what
    #: later opens use unless they name an option themselves.
    store_options: dict[str, Any] = field(default_factory=dict)
    #: What the store chose for the collection's recall target, and the recall it measured
    #: (:class:`rag.store.Calibration` as JSON); its options apply under ``store_options``.
    calibration: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the collection manifest {path}: {e}") from e
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)


def collection_dir(settings: Settings, name: str | None = None, store: str | None = None) -> Path:
    """The folder of a collection's manifest and records."""
    return (
        settings.data_dir
        / "collections"
        / (store or settings.store)
        / (name or settings.collection)
    )


@dataclass
class CollectionInfo:
    name: str
    store: str
    chunks: int
    sources: int
    embed_model: str
    dim: int


def list_collections(settings: Settings) -> list[CollectionInfo]:
    """Every collection under the data directory, in every store, with its counts (from
    the ingest record, so that no store has to be opened)."""
    out: list[CollectionInfo] = []
    root = settings.data_dir / "collections"
    if not root.is_dir():
        return out
    for manifest_file in sorted(root.glob("*/*/manifest.json")):
        m = Manifest.load(manifest_file)
        records = RecordStore(manifest_file.parent / "records.sqlite")
        try:
            sources, chunks = records.count()
        finally:
            records.close()
        out.append(CollectionInfo(m.name, m.store, chunks, sources, m.embed_model, m.dim))
    return out
