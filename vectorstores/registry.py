"""Backend names mapped to their classes, imported only when a backend is used.

Importing this module (or ``rag``) imports no database driver. Third-party packages add
backends through the ``ragkit.vectorstores`` entry-point group (``name = "module:Class"``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points

from rag.errors import ConfigError, MissingDependencyError
from vectorstores.base import VectorStore


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    target: str  # "module:Class"
    requires: tuple[str, ...]  # importable module names the backend needs
    extra: str  # the ragkit extra that installs them
    description: str

    def missing(self) -> list[str]:
        """Required modules that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    @property
    def installed(self) -> bool:
        return not self.missing()

    def load(self) -> type[VectorStore]:
        missing = self.missing()
        if missing:
            raise MissingDependencyError(f"the {self.name} store", missing[0], self.extra)
        module_name, _, class_name = self.target.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, class_name)


BUILTIN: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "faiss",
            "vectorstores.faiss:FaissStore",
            ("faiss",),
            "faiss",
            "FAISS in process: exact inner product by default, HNSW as an option",
        ),
        Backend(
            "chroma",
            "vectorstores.chroma:ChromaStore",
            ("chromadb",),
            "chroma",
            "Chroma: embedded PersistentClient, or a server with --store-url",
        ),
        Backend(
            "qdrant",
            "vectorstores.qdrant:QdrantStore",
            ("qdrant_edge", "qdrant_client"),
            "qdrant",
            "Qdrant: its engine in process (qdrant-edge), or a server with --store-url",
        ),
        Backend(
            "pgvector",
            "vectorstores.pgvector:PgvectorStore",
            ("psycopg", "pgvector"),
            "pgvector",
            "PostgreSQL + pgvector: embedded server, or yours with RAG_PG_DSN",
        ),
    )
}


def backends() -> dict[str, Backend]:
    """Every registered backend: the built-in ones, then those from entry points."""
    found = dict(BUILTIN)
    for ep in entry_points(group="ragkit.vectorstores"):
        if ep.name not in found:
            found[ep.name] = Backend(ep.name, ep.value, (), ep.name, f"plugin from {ep.value}")
    return found


def get_backend(name: str) -> Backend:
    known = backends()
    if name not in known:
        raise ConfigError(f"unknown store {name!r}; known stores: {', '.join(known)}")
    return known[name]


def store_class(name: str) -> type[VectorStore]:
    """The class of backend ``name``, importing its driver now."""
    return get_backend(name).load()
