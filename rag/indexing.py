"""Incremental, crash-safe ingestion: a source's items in, chunks and vectors in the store.

The pipeline knows sources only through their contract (:mod:`rag.source`): it asks the
source what is there, reads the items whose size or time differs from what it recorded,
and, under the default ``cleanup="full"``, removes recorded items that the source covers but
no longer lists.

Stages overlap: a reader thread reads, parses and chunks items; the calling thread
embeds batches of chunk texts (skipping texts already in the embedding cache); a writer
thread puts finished batches into the store. Queues between them are bounded, so memory
stays flat however large the folder.

An :class:`~rag.engines.Engine` may run the read, chunk and embed stages elsewhere (a Ray
cluster): the items it gets back go through the same checks and the same writer, so the
store and the records are written here, by this process alone, either way.

For every changed source the writer records the chunk ids it is about to write (pending),
writes them, deletes the source's stale chunks, then commits the record. A crash anywhere
leaves the store holding only ids that some record names, and the next run completes or
undoes the interrupted work (see :mod:`rag.records`).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.engines import Engine, ItemResult, Recipe, WorkItem, read_item
from rag.errors import ConfigError
from rag.records import CachedVectors, EmbeddingCache, RecordStore, SourceRecord
from rag.source import Source, SourceItem
from rag.store import VectorStore
from rag.types import Chunk, Failure, Skipped

if TYPE_CHECKING:
    from rag.chunking import Chunker
    from rag.embeddings import Embedder

CLEANUP_MODES = ("none", "per-source", "full")
_EMBED_BATCH = 256  # texts per embedding call; large enough to amortise, small enough to stream


@dataclass
class IngestReport:
    """What one ingest did. ``chunks`` counts chunks written in this run."""

    files: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[Failure] = field(default_factory=list)
    #: Items with nothing to index (empty files, file types no parser reads): listed, not
    #: errors. An item that had chunks and now has none loses them.
    skipped: list[Skipped] = field(default_factory=list)
    chunks: int = 0
    embedded: int = 0
    cached: int = 0
    total_chunks: int = 0
    #: Wall time of the whole ingest, preparing the model included.
    seconds: float = 0.0
    #: Of that, loading the embedding model (on first use, exporting it: seconds).
    model_seconds: float = 0.0
    embed_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed"] = [{"path": f.source, "reason": f.reason} for f in self.failed]
        out["skipped"] = [{"path": f.source, "reason": f.reason} for f in self.skipped]
        out["seconds"] = round(self.seconds, 3)
        out["embed_seconds"] = round(self.embed_seconds, 3)
        out["model_seconds"] = round(self.model_seconds, 3)
        return out


@dataclass
class Progress:
    """A snapshot handed to the progress callback after each step (from the calling thread
    or the writer thread, one call at a time).

    Chunks are the unit of work: ``chunks`` of ``chunks_total`` are embedded (or found in
    the embedding cache). ``chunks_total`` counts the chunks of the files read so far, so it
    grows while the reader is ahead of the model, and is final once ``files_done`` reaches
    ``files_total``.
    """

    #: Files (source items) this run reads: the new and changed ones.
    files_total: int
    #: Of those, the files finished: written, unchanged after all, failed or skipped.
    files_done: int
    #: Chunks embedded or taken from the embedding cache.
    chunks: int
    #: Chunks of the files read so far.
    chunks_total: int
    #: Chunks the model embedded (the rest came from the cache), and the seconds it took.
    embedded: int
    embed_seconds: float
    failed: int


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Loaded:
    ref: SourceItem
    record: SourceRecord | None
    chunks: list[Chunk] | None = None
    content_hash: str = ""
    failure: Failure | None = None
    skipped: Skipped | None = None
    #: Vectors of ``chunks`` when an engine embedded them, and the model's seconds.
    vectors: np.ndarray | None = None
    embed_seconds: float = 0.0

    @classmethod
    def of(cls, result: ItemResult, record: SourceRecord | None) -> _Loaded:
        r = result
        return cls(
            r.item,
            record,
            r.chunks,
            r.content_hash,
            r.failure,
            r.skipped,
            r.vectors,
            r.embed_seconds,
        )


@dataclass
class _Pending:
    """A source whose chunks are on their way to the store."""

    loaded: _Loaded
    ids: list[str]
    remaining: int


class Ingestor:
    """Ingests paths into one collection's store, keeping its record consistent."""

    def __init__(
        self,
        *,
        store: VectorStore,
        records: RecordStore,
        embedder: Callable[[], Embedder],
        chunker: Callable[[], Chunker],
        cache: EmbeddingCache | None,
        rechunk: bool = False,
        engine: Engine | None = None,
        recipe: Recipe | None = None,
    ) -> None:
        # The embedder and chunker are built on first use: an ingest that finds nothing
        # changed never loads the model. With an ``engine``, they are built where it runs,
        # from the ``recipe``.
        if engine is not None and recipe is None:
            raise ConfigError("an ingest engine needs the collection's recipe")
        self.store = store
        self.records = records
        self._embedder_factory = embedder
        self._chunker_factory = chunker
        self._embedder: Embedder | None = None
        self._chunker: Chunker | None = None
        self._factory_lock = threading.Lock()
        self.cache = cache
        self.rechunk = rechunk
        self.engine = engine
        self.recipe = recipe

    @property
    def embedder(self) -> Embedder:
        with self._factory_lock:
            if self._embedder is None:
                self._embedder = self._embedder_factory()
            return self._embedder

    @property
    def chunker(self) -> Chunker:
        with self._factory_lock:
            if self._chunker is None:
                self._chunker = self._chunker_factory()
            return self._chunker

    def run(
        self,
        source: Source,
        *,
        cleanup: str = "full",
        progress: ProgressCallback | None = None,
        also: Sequence[str] = (),
    ) -> IngestReport:
        """Bring the store in line with ``source``. ``also`` names recorded items to read
        again although the source does not list them (a rebuild of a damaged store)."""
        if cleanup not in CLEANUP_MODES:
            raise ConfigError(
                f"unknown cleanup mode {cleanup!r}; choose from {', '.join(CLEANUP_MODES)}"
            )
        started = time.perf_counter()
        report = IngestReport()
        known = self.records.sources()
        seen: set[str] = set()
        todo: list[tuple[SourceItem, SourceRecord | None]] = []
        for item in self._items(source, also):
            if isinstance(item, Failure):
                report.failed.append(item)
                continue
            if isinstance(item, Skipped):
                report.skipped.append(item)
                continue
            if item.id in seen:
                continue
            seen.add(item.id)
            record = known.get(item.id)
            if (
                not self.rechunk
                and record is not None
                and record.committed
                and record.size == item.size
                and record.mtime == item.mtime
            ):
                report.unchanged += 1
                continue
            todo.append((item, record))
        report.files = len(seen)

        if todo:
            self._process(source, todo, report, progress)

        if cleanup == "full":
            failed = [f.source for f in report.failed]
            gone = [
                r
                for s, r in known.items()
                if s not in seen and source.covers(s) and not _within(s, failed)
            ]
            self._remove(gone, report)
        # Sources left pending by an interrupted run that this run did not touch: make the
        # store agree with their last committed state.
        self._settle_pending(seen)
        report.total_chunks = self.store.count()
        report.seconds = time.perf_counter() - started
        return report

    @staticmethod
    def _items(source: Source, also: Sequence[str]) -> Iterable[SourceItem | Failure | Skipped]:
        yield from source.scan()
        for source_id in also:
            item = source.locate(source_id)
            if item is not None:
                yield item

    # --- stages ------------------------------------------------------------------------------

    def _process(
        self,
        source: Source,
        todo: list[tuple[SourceItem, SourceRecord | None]],
        report: IngestReport,
        progress: ProgressCallback | None,
    ) -> None:
        write_q: queue.Queue[tuple[list[Chunk], np.ndarray, list[_Loaded]] | None] = queue.Queue(
            maxsize=2
        )
        errors: list[BaseException] = []
        stop = threading.Event()
        state = Progress(
            files_total=len(todo),
            files_done=0,
            chunks=0,
            chunks_total=0,
            embedded=0,
            embed_seconds=0.0,
            failed=0,
        )
        state_lock = threading.Lock()

        def advance(**steps: float) -> None:
            """Adds ``steps`` to the counters and reports them (the calling thread and the
            writer both count, so under a lock, which also keeps the callbacks in order)."""
            with state_lock:
                for name, n in steps.items():
                    setattr(state, name, getattr(state, name) + n)
                if progress is not None:
                    progress(replace(state))

        pending: dict[str, _Pending] = {}

        def writer() -> None:
            try:
                while (item := write_q.get()) is not None:
                    chunks, vectors, finished = item
                    self._write(chunks, vectors, finished, pending, report)
                    advance(files_done=len(finished))
            except BaseException as e:
                errors.append(e)
                stop.set()
                while write_q.get() is not None:  # let the producer finish
                    pass

        thread = threading.Thread(target=writer, name="rag-write", daemon=True)
        thread.start()
        if self.engine is None:
            stream = self._read_here(source, todo, stop)
        else:
            stream = self._read_remote(self.engine, source, todo)
        try:
            batch: list[Chunk] = []
            finished: list[_Loaded] = []
            for loaded in stream:
                if stop.is_set():
                    break
                if loaded.failure is not None:
                    report.failed.append(loaded.failure)
                    advance(files_done=1, failed=1)
                    continue
                if loaded.skipped is not None:
                    report.skipped.append(loaded.skipped)
                    if loaded.record is not None:  # it had chunks; it has none now
                        self._remove([loaded.record], report)
                    advance(files_done=1)
                    continue
                if self._unchanged(loaded):
                    report.unchanged += 1
                    advance(files_done=1)
                    continue
                assert loaded.chunks is not None
                pending[loaded.ref.id] = _Pending(
                    loaded, [c.id for c in loaded.chunks], len(loaded.chunks)
                )
                batch.extend(loaded.chunks)
                finished.append(loaded)
                advance(chunks_total=len(loaded.chunks))
                if loaded.vectors is not None:  # embedded elsewhere: done as it arrives
                    n = len(loaded.chunks)
                    advance(chunks=n, embedded=n, embed_seconds=loaded.embed_seconds)
                if len(batch) >= _EMBED_BATCH:
                    write_q.put(self._embed(batch, finished, report, advance))
                    batch, finished = [], []
            if (batch or finished) and not stop.is_set():
                write_q.put(self._embed(batch, finished, report, advance))
        except BaseException:
            stop.set()
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stops the reader, or the engine's run
            write_q.put(None)
            thread.join()
        if errors:
            raise errors[0]

    def _read_here(
        self,
        source: Source,
        todo: list[tuple[SourceItem, SourceRecord | None]],
        stop: threading.Event,
    ) -> Iterator[_Loaded]:
        """The items read, parsed and chunked by a reader thread, ahead of the model."""
        loaded_q: queue.Queue[_Loaded | None] = queue.Queue(maxsize=64)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                for ref, record in todo:
                    if stop.is_set():
                        break
                    loaded_q.put(self._load(source, ref, record))
            except BaseException as e:  # surfaced in the calling thread
                errors.append(e)
            finally:
                loaded_q.put(None)

        thread = threading.Thread(target=reader, name="rag-read", daemon=True)
        thread.start()
        try:
            while (loaded := loaded_q.get()) is not None:
                yield loaded
        finally:
            if loaded is not None:  # closed early: stop the reader and let it finish
                stop.set()
                while loaded is not None:
                    loaded = loaded_q.get()
            thread.join()
        if errors:
            raise errors[0]

    def _read_remote(
        self,
        engine: Engine,
        source: Source,
        todo: list[tuple[SourceItem, SourceRecord | None]],
    ) -> Iterator[_Loaded]:
        """The items read, chunked and embedded by ``engine``, as its results come back."""
        assert self.recipe is not None
        records = {ref.id: record for ref, record in todo}
        work = [WorkItem(ref, self._previous_hash(record)) for ref, record in todo]
        for result in engine.compute(source, work, self.recipe):
            yield _Loaded.of(result, records[result.item.id])

    def _previous_hash(self, record: SourceRecord | None) -> str:
        """The content hash an item whose bytes are unchanged still has (none to compare
        when re-chunking: every item is cut again)."""
        if self.rechunk or record is None or not record.committed:
            return ""
        return record.content_hash

    def _load(self, source: Source, ref: SourceItem, record: SourceRecord | None) -> _Loaded:
        # The chunker (and so the model) is built only for an item that needs chunking.
        work = WorkItem(ref, self._previous_hash(record))
        return _Loaded.of(read_item(source, work, lambda docs: self.chunker.chunk(docs)), record)

    def _same_content(self, loaded: _Loaded) -> bool:
        r = loaded.record
        return (
            not self.rechunk
            and r is not None
            and r.committed
            and bool(loaded.content_hash)
            and r.content_hash == loaded.content_hash
        )

    def _unchanged(self, loaded: _Loaded) -> bool:
        if loaded.chunks is None and self._same_content(loaded):
            # Same bytes, new file times: remember the times, touch nothing else.
            self.records.touch(loaded.ref.id, size=loaded.ref.size, mtime=loaded.ref.mtime)
            return True
        return False

    def _embed(
        self,
        batch: list[Chunk],
        finished: list[_Loaded],
        report: IngestReport,
        advance: Callable[..., None],
    ) -> tuple[list[Chunk], np.ndarray, list[_Loaded]]:
        texts = [c.text for c in batch]
        if any(f.vectors is not None for f in finished):
            got = self._embedded_elsewhere(texts, finished)
        elif self.cache is None:
            t0 = time.perf_counter()
            vectors = self.embedder.embed(texts)
            got = CachedVectors(vectors, len(texts), 0, time.perf_counter() - t0)
        else:
            got = self.cache.embed(texts, self.embedder.embed)
        report.embed_seconds += got.seconds
        report.embedded += got.embedded
        report.cached += got.cached
        if not any(f.vectors is not None for f in finished):  # an engine's were counted
            advance(chunks=len(texts), embedded=got.embedded, embed_seconds=got.seconds)
        return batch, got.vectors, finished

    def _embedded_elsewhere(self, texts: list[str], finished: list[_Loaded]) -> CachedVectors:
        """The vectors an engine sent with the items (in the batch's order), kept in the
        embedding cache too, so that a later local ingest of the same texts finds them."""
        vectors = np.concatenate([np.asarray(f.vectors, dtype=np.float32) for f in finished])
        if len(vectors) != len(texts):
            raise RuntimeError(f"the engine sent {len(vectors)} vectors for {len(texts)} chunks")
        if self.cache is not None:
            hashes = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
            self.cache.store(hashes, [row.tobytes() for row in vectors])
        seconds = sum(f.embed_seconds for f in finished)
        return CachedVectors(vectors, embedded=len(texts), cached=0, seconds=seconds)

    def _write(
        self,
        chunks: list[Chunk],
        vectors: np.ndarray,
        finished: list[_Loaded],
        pending: dict[str, _Pending],
        report: IngestReport,
    ) -> None:
        # 1. Name every id about to be written, before writing it.
        intents = [
            SourceRecord(item.ref.id, "", 0, 0.0, pending_ids=pending[item.ref.id].ids)
            for item in finished
        ]
        if intents:
            self.records.mark_pending(intents)
        # 2. Write.
        if chunks:
            self.store.upsert(chunks, vectors)
            report.chunks += len(chunks)
        # 3. Remove what the new version no longer has, then commit.
        done: list[SourceRecord] = []
        stale: set[str] = set()
        for loaded in finished:
            source = loaded.ref.id
            p = pending.pop(source)
            previous = self.records.get(source)
            new_ids = set(p.ids)
            if previous is not None:
                stale |= previous.all_ids() - new_ids
            if loaded.record is None:
                report.added += 1
            else:
                report.updated += 1
            done.append(
                SourceRecord(source, loaded.content_hash, loaded.ref.size, loaded.ref.mtime, p.ids)
            )
        if stale:
            self.store.delete(sorted(stale))
        if done:
            self.records.commit(done)

    def _remove(self, records: Iterable[SourceRecord], report: IngestReport) -> None:
        records = list(records)
        if not records:
            return
        ids = sorted({i for r in records for i in r.all_ids()})
        if ids:
            self.store.delete(ids)
        self.records.remove(r.source for r in records)
        report.deleted += len(records)

    def _settle_pending(self, seen: set[str]) -> None:
        leftovers = [r for r in self.records.all() if not r.committed]
        for r in leftovers:
            stale = set(r.pending_ids) - set(r.chunk_ids)
            if stale:
                self.store.delete(sorted(stale))
            if r.content_hash:
                self.records.commit([r])
            else:
                # Never committed at all: the source's first ingest was interrupted.
                if r.chunk_ids:
                    self.store.delete(sorted(r.chunk_ids))
                self.records.remove([r.source])


def _within(source_id: str, prefixes: Sequence[str]) -> bool:
    """Whether ``source_id`` is one of ``prefixes`` or lies below one (``a/b`` is below
    ``a``): a folder or site that could not be listed keeps what was recorded under it."""
    return any(source_id == p or source_id.startswith(p.rstrip("/") + "/") for p in prefixes)
