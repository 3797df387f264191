"""ragkit: offline-first retrieval-augmented generation with interchangeable vector stores.

The library API::

    from rag import Settings, open_collection
    with open_collection(Settings(collection="docs"), create=True) as col:
        col.ingest(["./docs"])
        print(col.ask("How do I install it?").text)

Importing ``rag`` loads no model and no database driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "Chunk",
    "Collection",
    "Document",
    "Hit",
    "RagError",
    "Settings",
    "drop_collection",
    "list_collections",
    "open_collection",
]

_LAZY = {
    "Answer": "rag.types",
    "Chunk": "rag.types",
    "Document": "rag.types",
    "Hit": "rag.types",
    "RagError": "rag.errors",
    "Settings": "rag.config",
    "Collection": "rag.collection",
    "open_collection": "rag.collection",
    "list_collections": "rag.collection",
    "drop_collection": "rag.collection",
}

if TYPE_CHECKING:
    from rag.collection import Collection, drop_collection, list_collections, open_collection
    from rag.config import Settings
    from rag.errors import RagError
    from rag.types import Answer, Chunk, Document, Hit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
