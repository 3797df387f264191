"""A collection: the public face of ragkit's library API.

    from rag import Settings, open_collection
    col = open_collection(Settings(collection="docs"), create=True)
    col.ingest(["./docs"])
    for hit in col.search("how do I install it?"):
        print(hit.score, hit.chunk.source)
    print(col.ask("How do I install it?").text)

A collection is one named set of chunks in one store. It opens its store, embedder and
retriever lazily, each through the plugin registry (:mod:`rag.plugins`), so it knows no
backend, source or generator by name. Its files are described in :mod:`rag.manifest`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag import plugins
from rag.config import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EMBED_MODEL,
    DEFAULT_RECALL,
    Settings,
    default_embed_backend,
    installed_versions,
    models_dir,
)
from rag.errors import (
    CapabilityError,
    CollectionNotFoundError,
    ConfigError,
    EmbedderMismatchError,
    LockedError,
    StoreCorruptedError,
    StoreError,
)
from rag.filters import Filter, parse
from rag.manifest import CollectionInfo, Manifest, collection_dir, list_collections
from rag.records import EmbeddingCache, RecordStore
from rag.source import Source, SourceOptions, open_source
from rag.store import (
    Calibration,
    StoreConfig,
    VectorStore,
    calibrate,
    folder_writable,
    open_store,
    store_class,
)
from rag.types import Answer, Hit

if TYPE_CHECKING:
    import numpy as np

    from rag.chunking import ChunkerSettings
    from rag.embeddings import Embedder
    from rag.engines import Engine
    from rag.generation import Generator
    from rag.indexing import IngestReport, ProgressCallback
    from rag.monitoring import QueryEvent, QueryLog
    from rag.retrieval import Retriever

__all__ = [
    "Collection",
    "CollectionInfo",
    "collection_dir",
    "drop_collection",
    "list_collections",
    "open_collection",
]

logger = logging.getLogger("rag")


class Collection:
    """One named collection in one store. Opens its store, embedder and retriever lazily."""

    def __init__(self, settings: Settings, *, create: bool = False) -> None:
        # The store's name becomes a folder name: it must be a registered store first.
        plugins.get("stores", settings.store)
        self.settings = settings
        self.name = settings.collection
        self.path = collection_dir(settings)
        manifest_file = self.path / "manifest.json"
        if manifest_file.exists():
            self.manifest: Manifest | None = Manifest.load(manifest_file)
            self._check_embedder(self.manifest)
        elif create:
            self.manifest = None  # written by the first ingest, once the embedder is known
        else:
            raise CollectionNotFoundError(
                f"collection {self.name!r} does not exist in {settings.data_dir} "
                f"(store {settings.store}); run `rag ingest PATH --collection {self.name}` first"
            )
        self._store: VectorStore | None = None
        self._embedder: Embedder | None = None
        self._records: RecordStore | None = None
        self._retriever: Retriever | None = None
        self._querylog: QueryLog | None = None
        self._querylog_tried = False

    # --- identity and checks -------------------------------------------------------------

    @property
    def embed_model(self) -> str:
        if self.manifest is not None:
            return self.manifest.embed_model
        return self.settings.embed_model or DEFAULT_EMBED_MODEL

    @property
    def embed_backend(self) -> str:
        if self.manifest is not None:
            return self.manifest.embed_backend
        return self.settings.embed_backend or default_embed_backend(self.settings.embed_model)

    def _check_embedder(self, m: Manifest) -> None:
        s = self.settings
        if s.embed_model is not None and _model_id(s.embed_model) != m.embed_model:
            raise EmbedderMismatchError(
                f"collection {m.name!r} was built with the embedding model {m.embed_model} "
                f"({m.dim} dimensions), not {s.embed_model}; leave out --embed-model to use "
                f"the collection's, or ingest into a new collection (--collection NAME)"
            )
        if s.embed_backend is not None and s.embed_backend != m.embed_backend:
            raise EmbedderMismatchError(
                f"collection {m.name!r} was embedded with the {m.embed_backend} backend, not "
                f"{s.embed_backend}; queries must use the same backend (leave out "
                f"--embed-backend), or re-ingest into a new collection"
            )

    # --- lazily opened parts -------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from rag.embeddings import load_embedder

            embedder = load_embedder(
                self.embed_model,
                self.embed_backend,
                batch_size=self.settings.embed_batch_size,
                cache_dir=models_dir(self.settings),
            )
            if self.manifest is not None and embedder.dim != self.manifest.dim:
                raise EmbedderMismatchError(
                    f"collection {self.name!r} holds {self.manifest.dim}-dimensional vectors but "
                    f"{self.embed_model} makes {embedder.dim}-dimensional ones"
                )
            self._embedder = embedder
        return self._embedder

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            s = self.settings
            dim = self.manifest.dim if self.manifest is not None else self.embedder.dim
            calibrated = self.calibration.options if self.calibration is not None else {}
            config = StoreConfig(
                data_dir=s.data_dir / "stores" / s.store,
                url=s.store_url,
                options={**calibrated, **self.store_options},
            )
            self._store = open_store(s.store, self.name, dim=dim, config=config, create=True)
        return self._store

    @property
    def store_options(self) -> dict[str, Any]:
        """The store options named: those the collection was built with (saved in its
        manifest), overridden by any the settings name. They override the options the
        store chose for the recall target (:attr:`calibration`)."""
        saved = self.manifest.store_options if self.manifest is not None else {}
        return {**saved, **self.settings.store_options}

    @property
    def calibration(self) -> Calibration | None:
        """What the store chose for the collection's recall target at the last ingest that
        asked it (``None``: never, or the store cannot choose)."""
        m = self.manifest
        return Calibration.from_json(m.calibration) if m and m.calibration else None

    @property
    def records(self) -> RecordStore:
        if self._records is None:
            self._records = RecordStore(self.path / "records.sqlite")
        return self._records

    @property
    def retriever(self) -> Retriever:
        """The retriever, built with the settings' fusion, MMR and re-ranking options."""
        if self._retriever is None:
            from rag.retrieval import Retriever

            s = self.settings
            reranker = None
            if s.rerank_model:
                from rag.rerank import Reranker

                reranker = Reranker(s.rerank_model)
            self._retriever = Retriever(
                self.store,
                self.embedder,
                bm25_dir=self.path / "bm25",
                stamp=lambda: f"{self.settings.store}:{self.records.version()}",
                embed_texts=self._cached_embed,
                fusion=s.fusion,
                rrf_k=s.rrf_k,
                weight=s.fusion_weight,
                mmr_lambda=s.mmr_lambda,
                reranker=reranker,
            )
        return self._retriever

    def _embedding_cache(self, model_id: str, backend: str, dim: int) -> EmbeddingCache:
        return EmbeddingCache(
            self.settings.data_dir / "cache" / "embeddings.sqlite", f"{model_id}|{backend}", dim
        )

    def _cached_embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for chunk texts, from the embedding cache where possible."""
        emb = self.embedder
        cache = self._embedding_cache(emb.id, emb.backend, emb.dim)
        try:
            return cache.embed(texts, emb.embed).vectors
        finally:
            cache.close()

    # --- ingestion -----------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        source: str = "filesystem",
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        cleanup: str = "full",
        progress: ProgressCallback | None = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        engine: Engine | None = None,
    ) -> IngestReport:
        """Bring the collection in line with ``paths`` read by the source plugin ``source``
        (see :mod:`rag.indexing`): new and changed items are added, unchanged ones cost
        nothing, and with ``cleanup="full"`` items gone from what the source covers are
        removed. ``params`` are the source's own options (:mod:`rag.source`); the source may
        keep state between runs in ``<collection>/sources/<source>/``. An ``engine``
        (:mod:`rag.engines`) reads, chunks and embeds elsewhere; this process still plans,
        writes the store and keeps the records."""
        pairs = params.items() if isinstance(params, Mapping) else params
        options = SourceOptions(
            targets=tuple(os.fspath(p) for p in paths),
            include=tuple(include),
            exclude=tuple(exclude),
            max_bytes=self.settings.max_file_bytes,
            params=tuple((str(k), str(v)) for k, v in pairs),
            state_dir=os.fspath(self.path / "sources" / source),
        )
        if (
            self.settings.recall is not None
            and not store_class(self.settings.store).capabilities.calibrate
        ):
            raise CapabilityError(
                f"the {self.settings.store} store cannot choose its index from a recall target "
                "(--recall, RAG_RECALL); leave it out and set the index with --store-opt"
            )
        reader = open_source(source, options)
        started = time.perf_counter()
        with self.lock():
            # The model first, and timed: a first use exports it, which takes seconds.
            self.embedder  # noqa: B018 (loads it)
            model_seconds = time.perf_counter() - started
            chunking, rechunk = self._chunking()
            self._check_chunking(chunking)
            manifest = self._prepare_manifest(chunking, rechunk)
            cache = self._embedding_cache(
                manifest.embed_model, manifest.embed_backend, manifest.dim
            )
            try:
                report = self._run_ingest(
                    reader, cache, chunking, rechunk, cleanup, progress, engine
                )
            finally:
                cache.close()
            if report.chunks or report.deleted:
                self._refresh_bm25()
                self._monitor_ingest()
            self._calibrate(manifest)
            report.model_seconds = model_seconds
            report.seconds = time.perf_counter() - started
            manifest.last_ingest = {
                "time": time.time(),
                "source": source,
                # JSON-safe: bytes of a path that are not UTF-8 are written as \xNN.
                "targets": [
                    t.encode("utf-8", "backslashreplace").decode("utf-8") for t in options.targets
                ],
                **{k: v for k, v in report.to_json().items() if k != "failed"},
                "failed": len(report.failed),
            }
            manifest.versions = installed_versions()
            manifest.store_options = self.store_options
            manifest.save(self.path / "manifest.json")
        return report

    def _chunking(self) -> tuple[ChunkerSettings, bool]:
        """The chunker settings this ingest uses (given ones, else the collection's, else
        the defaults) and whether they differ from what built the collection."""
        from rag.chunking import ChunkerSettings

        s, m = self.settings, self.manifest
        size = s.chunk_size if s.chunk_size is not None else (m.chunk_size if m else None)
        overlap = (
            s.chunk_overlap if s.chunk_overlap is not None else (m.chunk_overlap if m else None)
        )
        chunking = ChunkerSettings(
            DEFAULT_CHUNK_SIZE if size is None else size,
            DEFAULT_CHUNK_OVERLAP if overlap is None else overlap,
        )
        rechunk = m is not None and (m.chunk_size, m.chunk_overlap) != (
            chunking.chunk_size,
            chunking.chunk_overlap,
        )
        return chunking, rechunk

    def _check_chunking(self, chunking: ChunkerSettings) -> None:
        """Refuse a chunk size the model cannot read whole, or an overlap over half the size,
        rather than change them behind the user's back."""
        s = self.settings
        if s.chunk_size is None and s.chunk_overlap is None:
            return
        limit = self.embedder.max_tokens
        if chunking.chunk_size > limit:
            raise ConfigError(
                f"chunk size {chunking.chunk_size} is more than {self.embed_model} reads at "
                f"once ({limit} tokens; it would ignore the rest): choose at most {limit}"
            )
        if chunking.chunk_overlap > chunking.chunk_size // 2:
            raise ConfigError(
                f"chunk overlap {chunking.chunk_overlap} is more than half the chunk size "
                f"{chunking.chunk_size}: choose at most {chunking.chunk_size // 2}"
            )

    def _prepare_manifest(self, chunking: ChunkerSettings, rechunk: bool) -> Manifest:
        """The manifest, written now for a new collection or new chunker settings (which
        need the embedder loaded, to know its identity and token limit)."""
        from rag.chunking import Chunker

        m = self.manifest
        if m is not None and not rechunk:
            return m
        emb = self.embedder
        chunker = Chunker.for_embedder(chunking, emb)
        if m is None:
            m = Manifest(
                self.name,
                self.settings.store,
                emb.id,
                emb.backend,
                emb.dim,
                emb.max_tokens,
                chunker.size,
                chunker.overlap,
                versions=installed_versions(),
                store_options=dict(self.settings.store_options),
            )
        m.chunk_size, m.chunk_overlap = chunker.size, chunker.overlap
        m.save(self.path / "manifest.json")
        self.manifest = m
        return m

    def _run_ingest(
        self,
        reader: Source,
        cache: EmbeddingCache,
        chunking: ChunkerSettings,
        rechunk: bool,
        cleanup: str,
        progress: ProgressCallback | None,
        engine: Engine | None = None,
    ) -> IngestReport:
        """Run the pipeline; a store found damaged is emptied and the run repeated, with
        every recorded item that still exists read again (from the embedding cache)."""
        from rag.chunking import Chunker
        from rag.engines import Recipe
        from rag.indexing import Ingestor

        recipe = None
        if engine is not None:
            chunker = Chunker.for_embedder(chunking, self.embedder)
            recipe = Recipe(
                self.embed_model,
                self.embed_backend,
                self.settings.embed_batch_size,
                os.fspath(models_dir(self.settings)),
                chunker.size,
                chunker.overlap,
            )

        def ingestor() -> Ingestor:
            return Ingestor(
                store=self.store,
                records=self.records,
                embedder=lambda: self.embedder,
                chunker=lambda: Chunker.for_embedder(chunking, self.embedder),
                cache=cache,
                rechunk=rechunk,
                engine=engine,
                recipe=recipe,
            )

        try:
            return ingestor().run(reader, cleanup=cleanup, progress=progress)
        except StoreCorruptedError as e:
            logger.warning("%s; rebuilding %r from its sources", e, self.name)
            recorded = [r.source for r in self.records.all()]
            self.store.drop()
            self._store = None
            self._retriever = None
            self.records.clear()
            return ingestor().run(reader, cleanup=cleanup, progress=progress, also=recorded)

    def _calibrate(self, manifest: Manifest) -> None:
        """Have the store choose its index for the recall target (the given one, else the
        saved one, else the default) unless its last choice still fits; record the choice."""
        store, previous = self.store, self.calibration
        if not store.capabilities.calibrate:
            return  # a target given was refused before the ingest; status says so
        target = self.settings.recall
        if target is None:
            target = previous.target if previous is not None else DEFAULT_RECALL
        if previous is not None and previous.still_fits(target, store.count(), self.store_options):
            return
        manifest.calibration = calibrate(store, target, fixed=self.store_options).to_json()

    def _refresh_bm25(self) -> None:
        # Keep the keyword index in step with the collection when it is in use (it exists)
        # or cheap to build; otherwise it is built on first use.
        import importlib.util

        if importlib.util.find_spec("bm25s") is None:
            return
        if (self.path / "bm25").exists() or self.store.count() <= 200_000:
            self.retriever.rebuild_bm25()

    def _monitor_ingest(self) -> None:
        """The corpus reference for drift (:mod:`rag.monitoring.drift`), taken at the first
        ingest that changes the collection; at later ones, the corpus drift against it."""
        from rag.monitoring import build_reference, record_corpus_drift

        log = self.querylog
        if log is None:
            return
        try:
            if log.reference() is None:
                ref = build_reference(self.store, self.embedder.embed, embed_model=self.embed_model)
                if ref is not None:
                    log.save_reference(ref)
            else:
                record_corpus_drift(log, self.store)
        except (sqlite3.Error, OSError) as e:  # the ingest itself is done and saved
            logger.warning("collection %r: no monitoring reference taken (%s)", self.name, e)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The collection's write lock; a second writer gets :class:`LockedError` at once."""
        if not folder_writable(self.path):
            raise StoreError(
                f"the data directory {self.settings.data_dir} is read-only: collection "
                f"{self.name!r} can be searched there, not changed"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "ingest.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise LockedError(
                    f"collection {self.name!r} is being written by {holder}; "
                    "wait for that ingest to finish and run again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
            yield
        finally:
            os.close(fd)

    # --- questions -----------------------------------------------------------------------

    @property
    def querylog(self) -> QueryLog | None:
        """The collection's query log (:mod:`rag.monitoring`): ``None`` before the first
        ingest and where the data directory is read-only (nothing is logged there)."""
        if not self._querylog_tried and self.manifest is not None:
            self._querylog_tried = True
            if not folder_writable(self.path):
                return None
            from rag.monitoring import FILE_NAME, open_query_log

            try:
                self._querylog = open_query_log(
                    self.path / FILE_NAME, policy=self.settings.log_queries
                )
            except (sqlite3.Error, OSError) as e:
                logger.warning("collection %r: queries are not logged (%s)", self.name, e)
        return self._querylog

    def _log(self, event: QueryEvent) -> None:
        log = self.querylog
        if log is not None:
            log.record(event)

    def _score_kind(self, mode: str) -> str:
        from rag.monitoring import score_kind

        return score_kind(
            mode, fusion=self.settings.fusion, reranked=bool(self.settings.rerank_model)
        )

    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        where: Filter | dict | str | None = None,
        mode: str | None = None,
        mmr: bool = False,
    ) -> list[Hit]:
        """The ``k`` best passages for ``query`` (see :mod:`rag.retrieval` for the modes).
        Each call leaves one event in the query log (:mod:`rag.monitoring`); inside
        :meth:`ask`, the answer's event is the one."""
        from rag.monitoring.events import error_event, note_search, search_event

        k, mode = k or self.settings.k, mode or self.settings.mode
        stages: dict[str, float] = {}
        try:
            hits, vector = self._search(query, k=k, where=where, mode=mode, mmr=mmr, stages=stages)
        except Exception as e:
            if not note_search(stages=stages):
                self._log(error_event("search", e, mode=mode, k=k, stages=stages, query=query))
            raise
        inner = {s: v for s, v in stages.items() if s != "total"}
        if not note_search(vector=vector, stages=inner):
            kind = self._score_kind(mode)
            self._log(
                search_event(
                    hits, mode=mode, k=k, kind=kind, stages=stages, query=query, vector=vector
                )
            )
        return hits

    def _search(
        self,
        query: str,
        *,
        k: int,
        where: Filter | dict | str | None,
        mode: str,
        mmr: bool,
        stages: dict[str, float],
    ) -> tuple[list[Hit], np.ndarray | None]:
        """The hits and the query's vector (``None`` in bm25 mode); ``stages`` gets the
        seconds spent embedding and searching (loading the model is not counted)."""
        flt = parse(where)
        retriever = self.retriever
        t0 = time.perf_counter()
        vector = retriever.embedder.embed_query(query) if mode != "bm25" else None
        t1 = time.perf_counter()
        stages["embed"] = t1 - t0
        timings: dict[str, float] = {}
        hits = retriever.search(
            query, k=k, where=flt, mode=mode, mmr=mmr, vector=vector, timings=timings
        )
        t2 = time.perf_counter()
        stages.update(timings, total=t2 - t0)
        return hits, vector

    def ask(
        self,
        question: str,
        *,
        k: int | None = None,
        where: Filter | dict | str | None = None,
        mode: str | None = None,
        mmr: bool = False,
        history: Sequence[tuple[str, str]] = (),
        generator: Generator | None = None,
        on_token: Callable[[str], None] | None = None,
        search: Callable[..., list[Hit]] | None = None,
    ) -> Answer:
        """Retrieve passages for ``question`` and answer from them, citing them as [n].

        ``search`` stands in for :meth:`search` (called with the query and the same keyword
        arguments: ``k``, ``where``, ``mode``, ``mmr``), for a server that batches searches;
        it may hand the query's vector and its stage latencies to the answer's query-log
        event with :func:`rag.monitoring.note_search`. Each call leaves one event in the
        query log, the search's included.

        Without a ``generator``, a routes file (:mod:`rag.routing`) chooses one from the
        question and the passages, after retrieval and before anything is sent; it may
        refuse (``RouteRefused``). A generator that is not local is not given ``history``
        (earlier answers may quote private passages)."""
        from rag.monitoring.events import answer_event, capturing, error_event

        used_k, used_mode = k or self.settings.k, mode or self.settings.mode
        with capturing() as seen:
            started = time.perf_counter()
            try:
                result = self._ask(
                    question, k, where, mode, mmr, history, generator, on_token, search
                )
            except Exception as e:
                stages = {**seen.get("stages", {}), "total": time.perf_counter() - started}
                self._log(
                    error_event("ask", e, mode=used_mode, k=used_k, stages=stages, query=question)
                )
                raise
        # The work of the answer; loading a generator or a model is not counted.
        work = sum(result.timings.get(s, 0.0) for s in ("rewrite", "retrieve", "generate"))
        stages = {**seen.get("stages", {}), "total": work}
        kind = self._score_kind(used_mode)
        event = answer_event(
            result, mode=used_mode, k=used_k, kind=kind, stages=stages, vector=seen.get("vector")
        )
        self._log(event)
        return result

    def _ask(
        self,
        question: str,
        k: int | None,
        where: Filter | dict | str | None,
        mode: str | None,
        mmr: bool,
        history: Sequence[tuple[str, str]],
        generator: Generator | None,
        on_token: Callable[[str], None] | None,
        search: Callable[..., list[Hit]] | None,
    ) -> Answer:
        from rag.generation import answer, load_generator
        from rag.routing import router_for

        router = router_for(self) if generator is None else None
        if router is not None:
            gen = router.rewriter(self.settings, embed=self.embedder.embed, history=bool(history))
        else:
            gen = generator or load_generator(self.settings, embed=self.embedder.embed)
        t0 = time.perf_counter()
        from rag.generation.rewrite import standalone

        query, _ = standalone(question, history, gen)
        t1 = time.perf_counter()
        hits = (search or self.search)(query, k=k, where=where, mode=mode, mmr=mmr)
        t2 = time.perf_counter()
        route = None
        if router is not None:
            route = router.decide(question, hits)
            gen = router.generator(route.name, self.settings, embed=self.embedder.embed)
            history = history if route.local else ()
        result = answer(
            gen, question, hits, history=history, on_token=on_token, embed=self.embedder.embed
        )
        result.timings.update({"rewrite": t1 - t0, "retrieve": t2 - t1})
        result.query = query
        if route is not None:
            result.route, result.route_reason = route.name, route.reason
        return result

    @property
    def exists(self) -> bool:
        """Whether the collection has been created (by a first ingest)."""
        return self.manifest is not None

    def status(self) -> dict[str, Any]:
        """Counts, sources, embedder and last ingest (all zero for a collection that has not
        been ingested into yet; nothing is created)."""
        m = self.manifest
        sources, chunks = self.records.count() if m is not None else (0, 0)
        return {
            "collection": self.name,
            "store": self.settings.store,
            "chunks": self.store.count() if m is not None else 0,
            "recorded_chunks": chunks,
            "sources": sources,
            "embedder": None
            if m is None
            else {"model": m.embed_model, "backend": m.embed_backend, "dim": m.dim},
            "chunker": None
            if m is None
            else {"chunk_size": m.chunk_size, "chunk_overlap": m.chunk_overlap},
            "store_options": self.store_options,
            "calibration": None if m is None else m.calibration,
            "created": None if m is None else m.created,
            "last_ingest": None if m is None else m.last_ingest,
        }

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._records is not None:
            self._records.close()
        if self._querylog is not None:
            self._querylog.flush()  # shared by the process: written, not closed
        self._store = self._records = self._retriever = None
        self._querylog, self._querylog_tried = None, False

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _model_id(name: str) -> str:
    """The identity a collection records for the model ``name`` (its resolved id)."""
    from rag.embeddings.models import resolve_model

    try:
        return resolve_model(name)[0]
    except Exception:
        return name


def open_collection(settings: Settings, *, create: bool = False) -> Collection:
    """The collection ``settings.collection`` in ``settings.store``."""
    return Collection(settings, create=create)


def drop_collection(settings: Settings, name: str) -> None:
    """Delete a collection from its store and its record from the data directory."""
    col = Collection(settings.with_(collection=name))
    with col.lock():
        col.store.drop()
        col._store = None
        col.close()
    shutil.rmtree(col.path, ignore_errors=True)
