"""The engine seam: where an ingest's heavy stages (read and parse, chunk, embed) run.

By default they run in the ingesting process (:class:`rag.indexing.Ingestor`'s reader
thread and model). An :class:`Engine` runs them elsewhere, on a cluster say
(``connectors.ray_engine``): the ingest hands it the items to read, with what it needs to
rebuild the collection's chunker and embedder (:class:`Recipe`), and gets back one
:class:`ItemResult` per item, with its chunks and their vectors.

Everything else stays with the ingest, in this process: which items changed (unchanged ones
are never handed over), writing to the store, and the records of what each item contributed
(pending before the write, committed after it; see :mod:`rag.records`). An engine only
computes. So a re-run after a failure anywhere converges as a local ingest does, and the
collection's lock still keeps two ingests apart.

The core knows no engine by name and imports none: the command line builds one and hands
it to :meth:`rag.collection.Collection.ingest`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rag.errors import IngestError, NothingToIndex
from rag.source import Source, SourceItem
from rag.types import Chunk, Document, Failure, Skipped

if TYPE_CHECKING:
    import numpy as np

    from rag.chunking import Chunker
    from rag.embeddings import Embedder


@dataclass(frozen=True)
class Recipe:
    """How a collection turns text into chunks and vectors: enough for another process or
    machine to build the same chunker and embedder (``load_embedder`` arguments and the
    chunker settings the collection records)."""

    embed_model: str
    embed_backend: str
    embed_batch_size: int
    models_dir: str | None
    chunk_size: int
    chunk_overlap: int

    def embedder(self) -> Embedder:
        """The embedder (loaded once per process)."""
        from rag.embeddings import load_embedder

        return load_embedder(
            self.embed_model,
            self.embed_backend,
            batch_size=self.embed_batch_size,
            cache_dir=Path(self.models_dir) if self.models_dir else None,
        )

    def chunker(self, embedder: Embedder) -> Chunker:
        from rag.chunking import Chunker, ChunkerSettings

        return Chunker.for_embedder(ChunkerSettings(self.chunk_size, self.chunk_overlap), embedder)


@dataclass(frozen=True)
class WorkItem:
    """An item to read, with the content hash of its committed record ("" when it has none,
    or when the ingest re-chunks everything): an item whose bytes still hash to it is not
    chunked again."""

    item: SourceItem
    previous_hash: str = ""


@dataclass
class ItemResult:
    """What reading an item gave: its chunks (and, from an engine, their vectors), or why it
    has none. ``chunks`` is ``None`` without a failure or skip when the item's content is
    the one recorded (only its file times changed)."""

    item: SourceItem
    content_hash: str = ""
    chunks: list[Chunk] | None = None
    vectors: np.ndarray | None = None
    #: Seconds the model spent on this item's chunks (an engine's share of its batches).
    embed_seconds: float = 0.0
    failure: Failure | None = None
    skipped: Skipped | None = None


class Engine(Protocol):
    """Runs the read, chunk and embed stages of an ingest somewhere else."""

    #: The engine's name, as ``rag ingest --engine`` takes it.
    name: str

    def compute(
        self, source: Source, work: Sequence[WorkItem], recipe: Recipe
    ) -> Iterator[ItemResult]:
        """One result per work item, in any order, each with its vectors (one row per chunk,
        float32) unless it has no chunks. Raises :class:`~rag.errors.RagError` subclasses
        for what the user can act on (engine not installed, cluster unreachable)."""
        ...


def read_item(
    source: Source, work: WorkItem, chunk: Callable[[list[Document]], list[Chunk]]
) -> ItemResult:
    """Read, parse and ``chunk`` one item (the stage local and remote ingests share). Errors
    a user can act on become the result's failure or skip; anything else propagates."""
    ref = work.item
    out = ItemResult(ref)
    try:
        docs = source.load(ref)
        out.content_hash = str(docs[0].metadata.get("content_hash", "")) if docs else ""
        if work.previous_hash and out.content_hash == work.previous_hash:
            return out
        chunks = chunk(docs)
        if not chunks:
            raise NothingToIndex("no text to index")
        out.chunks = chunks
    except NothingToIndex as e:
        out.skipped = Skipped(ref.id, str(e))
    except IngestError as e:
        out.failure = Failure(ref.id, str(e))
    except OSError as e:
        out.failure = Failure(ref.id, e.strerror or str(e))
    return out
