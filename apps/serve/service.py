"""The collections a server exposes: every collection of one data directory, each named by a
model id (``ragkit/<collection>``, or ``ragkit/<store>/<collection>`` when two stores hold
a collection of that name), opened once and shared by every request.

Both faces use it: the HTTP API (:mod:`apps.serve.app`) and the MCP tools. Its
:meth:`Service.search` batches concurrent dense searches of a collection
(:mod:`apps.serve.batching`) unless ``batching`` says not to.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apps.serve.batching import BatchConfig, SearchBatcher
from rag.errors import ConfigError, RagError
from rag.filters import Filter, parse

if TYPE_CHECKING:
    from collections.abc import Mapping

    from apps.serve.metrics import Metrics
    from rag.collection import Collection
    from rag.config import Settings
    from rag.types import Hit

#: The prefix of every model id.
PREFIX = "ragkit/"
#: Beside a collection's manifest: its ingest record and the record's write-ahead log.
_RECORD_FILES = ("records.sqlite", "records.sqlite-wal")


class UnknownCollection(RagError):
    """No collection of the data directory has that model id or name."""


@dataclass(frozen=True)
class CollectionRef:
    """One collection of the data directory, as the service names it."""

    id: str
    name: str
    store: str
    chunks: int
    sources: int
    embed_model: str
    dim: int


class Service:
    """Every collection under ``settings.data_dir``; each :class:`Collection` is opened on
    first use (with ``settings`` for everything but its name and store) and kept open until
    :meth:`close`. Thread-safe: requests run in worker threads.

    ``batching`` (default :class:`BatchConfig`: on, 32 requests, 5 ms) says how
    :meth:`search` batches concurrent dense searches."""

    def __init__(self, settings: Settings, *, batching: BatchConfig | None = None) -> None:
        self.settings = settings
        self.batching = batching if batching is not None else BatchConfig()
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], Collection] = {}
        self._batchers: dict[tuple[str, str], SearchBatcher] = {}
        self._closed_stats: dict[str, dict[str, object]] = {}
        self._refs: tuple[tuple[object, ...], list[CollectionRef]] | None = None
        #: Where searches and answers are counted and timed (set by the app).
        self.metrics: Metrics | None = None

    def refs(self) -> list[CollectionRef]:
        """The collections now in the data directory: read again whenever a collection's
        files have changed since the last reading (so that one ingested, changed or dropped
        while the server runs shows at once), and otherwise the last reading, which every
        request's :meth:`resolve` would else pay for (counting a collection's chunks reads
        its whole ingest record: 15 ms at 100,000 chunks)."""
        signature = self._signature()
        with self._lock:
            if self._refs is not None and self._refs[0] == signature:
                return list(self._refs[1])
        refs = self._read_refs()
        with self._lock:
            self._refs = (signature, refs)
        return list(refs)

    def _signature(self) -> tuple[object, ...]:
        """The size, time and inode of each file ``rag.manifest.list_collections`` reads
        (every ``collections/<store>/<name>/manifest.json`` and its ``records.sqlite``, with
        the write-ahead log that a write grows): what changes when a collection does."""
        parts: list[object] = []
        for manifest in sorted((self.settings.data_dir / "collections").glob("*/*/manifest.json")):
            for f in (manifest, *(manifest.with_name(n) for n in _RECORD_FILES)):
                try:
                    st = f.stat()
                except OSError:
                    parts.append((str(f), None))
                else:
                    parts.append((str(f), st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(parts)

    def _read_refs(self) -> list[CollectionRef]:
        from rag.manifest import list_collections

        infos = list_collections(self.settings)
        names = [i.name for i in infos]
        return [
            CollectionRef(
                id=PREFIX + (i.name if names.count(i.name) == 1 else f"{i.store}/{i.name}"),
                name=i.name,
                store=i.store,
                chunks=i.chunks,
                sources=i.sources,
                embed_model=i.embed_model,
                dim=i.dim,
            )
            for i in infos
        ]

    def resolve(self, model: str) -> CollectionRef:
        """The collection a model id names; a bare collection name (or ``store/name``) is
        accepted too. Raises :class:`UnknownCollection` listing the ids there are."""
        refs = self.refs()
        wanted = model.removeprefix(PREFIX)
        for ref in refs:
            if wanted in (ref.id.removeprefix(PREFIX), f"{ref.store}/{ref.name}"):
                return ref
        known = ", ".join(r.id for r in refs) or "none: ingest documents first"
        raise UnknownCollection(
            f"no collection {model!r} in this data directory (there are: {known})"
        )

    def collection(self, ref: CollectionRef) -> Collection:
        """The open collection ``ref`` names (opened once)."""
        from rag.collection import open_collection

        key = (ref.store, ref.name)
        with self._lock:
            col = self._open.get(key)
            if col is None:
                col = open_collection(self.settings.with_(collection=ref.name, store=ref.store))
                self._open[key] = col
            return col

    def search(
        self,
        ref: CollectionRef,
        query: str,
        *,
        k: int | None = None,
        where: Filter | Mapping[str, object] | str | None = None,
        mode: str | None = None,
        mmr: bool = False,
    ) -> list[Hit]:
        """``Collection.search`` on ``ref``'s collection, with the same answer: a dense
        search without MMR or a re-ranker goes through the collection's batcher when
        batching is on; any other search runs on its own."""
        started = time.perf_counter()
        try:
            hits = self._search(ref, query, k=k, where=where, mode=mode, mmr=mmr)
        except Exception as e:
            if self.metrics is not None:
                self.metrics.outcome(ref.id, "search", e)
            raise
        if self.metrics is not None:
            self.metrics.stage(ref.id, "search", time.perf_counter() - started)
            self.metrics.outcome(ref.id, "search", None)
        return hits

    def _search(
        self,
        ref: CollectionRef,
        query: str,
        *,
        k: int | None,
        where: Filter | Mapping[str, object] | str | None,
        mode: str | None,
        mmr: bool,
    ) -> list[Hit]:
        col = self.collection(ref)
        k = k or col.settings.k
        mode = mode or col.settings.mode
        if self.batching.enabled and mode == "dense" and not mmr:
            if k < 1:
                raise ConfigError(f"k must be at least 1, got {k}")
            if col.retriever.reranker is None:
                return self._batched(ref, col, query, k=k, where=parse(where))
        return col.search(query, k=k, where=where, mode=mode, mmr=mmr)  # logs its own event

    def _batched(
        self, ref: CollectionRef, col: Collection, query: str, *, k: int, where: Filter | None
    ) -> list[Hit]:
        """A batched dense search, with its query-log event (:mod:`rag.monitoring`): the
        search's own, or, inside ``Collection.ask``, handed to the answer's."""
        from rag.monitoring import error_event, note_search, search_event

        log = col.querylog
        started = time.perf_counter()
        try:
            hits, vector = self._batcher(ref, col).search_vector(query, k=k, where=where)
        except Exception as e:
            stages = {"search": time.perf_counter() - started}
            if not note_search(stages=stages) and log is not None:
                log.record(error_event("search", e, mode="dense", k=k, stages=stages, query=query))
            raise
        seconds = time.perf_counter() - started
        # Embedding and store work are shared in a batch: one stage, the request's wait.
        if not note_search(vector=vector, stages={"search": seconds}) and log is not None:
            stages = {"search": seconds, "total": seconds}
            event = search_event(
                hits, mode="dense", k=k, kind="dense", stages=stages, query=query, vector=vector
            )
            log.record(event)
        return hits

    def _batcher(self, ref: CollectionRef, col: Collection) -> SearchBatcher:
        key = (ref.store, ref.name)
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                batcher = SearchBatcher(col, self.batching, name=f"{ref.store}/{ref.name}")
                self._batchers[key] = batcher
            return batcher

    def batch_stats(self) -> dict[str, dict[str, object]]:
        """Per collection (``store/name``): batches run, requests in them, the mean and the
        largest batch; kept after :meth:`close`."""
        with self._lock:
            live = {f"{s}/{n}": b.stats() for (s, n), b in self._batchers.items()}
            return {**self._closed_stats, **live}

    def close(self) -> None:
        """Answers the searches queued for a batch, then closes every collection."""
        with self._lock:
            batchers, self._batchers = dict(self._batchers), {}
        for (store, name), batcher in batchers.items():
            batcher.close()
            with self._lock:
                self._closed_stats[f"{store}/{name}"] = batcher.stats()
        with self._lock:
            cols, self._open = list(self._open.values()), {}
        for col in cols:
            col.close()
