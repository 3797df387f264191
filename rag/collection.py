"""A collection: the public face of ragkit's library API.

    from rag import Settings, open_collection
    col = open_collection(Settings(collection="docs"))
    col.ingest(["./docs"])
    for hit in col.search("how do I install it?"):
        print(hit.score, hit.chunk.source)
    print(col.ask("How do I install it?").text)

Files under the data directory::

    collections/<store>/<name>/manifest.json   how the collection was built
    collections/<store>/<name>/records.sqlite  what each source contributed (incremental ingest)
    collections/<store>/<name>/ingest.lock     held by the ingest in progress
    stores/<store>/...                         the embedded engines' own files
    cache/embeddings.sqlite                    vectors by (model, text hash)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rag.config import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EMBED_MODEL,
    Settings,
    default_embed_backend,
    models_dir,
)
from rag.errors import (
    CollectionNotFoundError,
    ConfigError,
    EmbedderMismatchError,
    LockedError,
    StoreCorruptedError,
)
from rag.filters import Filter, parse
from rag.types import Answer, Hit

MANIFEST_VERSION = 1
logger = logging.getLogger("rag")


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

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the collection manifest {path}: {e}") from e
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "ragkit",
        "sentence-transformers",
        "torch",
        "faiss-cpu",
        "chromadb",
        "qdrant-edge-py",
        "qdrant-client",
        "psycopg",
        "onnxruntime",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def collection_dir(settings: Settings, name: str | None = None, store: str | None = None) -> Path:
    return (
        settings.data_dir
        / "collections"
        / (store or settings.store)
        / (name or settings.collection)
    )


class Collection:
    """One named collection in one store. Opens its store, embedder and generator lazily."""

    def __init__(self, settings: Settings, *, create: bool = False) -> None:
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
        self._store: Any = None
        self._embedder: Any = None
        self._records: Any = None
        self._retriever: Any = None

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
        from rag.embeddings import resolve_model

        s = self.settings
        if (
            s.embed_model is not None
            and resolve_model_id(s.embed_model, resolve_model) != m.embed_model
        ):
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
    def embedder(self) -> Any:
        if self._embedder is None:
            from rag.embeddings import load_embedder

            self._embedder = load_embedder(
                self.embed_model,
                self.embed_backend,
                batch_size=self.settings.embed_batch_size,
                cache_dir=models_dir(self.settings),
            )
            if self.manifest is not None and self._embedder.dim != self.manifest.dim:
                raise EmbedderMismatchError(
                    f"collection {self.name!r} holds {self.manifest.dim}-dimensional vectors but "
                    f"{self.embed_model} makes {self._embedder.dim}-dimensional ones"
                )
        return self._embedder

    @property
    def store(self) -> Any:
        if self._store is None:
            from vectorstores.base import StoreConfig
            from vectorstores.registry import store_class

            cls = store_class(self.settings.store)
            dim = self.manifest.dim if self.manifest is not None else self.embedder.dim
            config = StoreConfig(
                data_dir=self.settings.data_dir / "stores" / self.settings.store,
                url=self.settings.store_url,
                options=dict(self.settings.store_options),
            )
            self._store = cls(self.name, dim=dim, config=config, create=True)
        return self._store

    @property
    def records(self) -> Any:
        if self._records is None:
            from rag.records import RecordStore

            self._records = RecordStore(self.path / "records.sqlite")
        return self._records

    # --- operations ----------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        cleanup: str = "full",
        progress: Callable[[Any], None] | None = None,
    ) -> Any:
        """Bring the collection in line with ``paths`` (see :mod:`rag.indexing`)."""
        from rag.chunking import Chunker, ChunkerSettings
        from rag.indexing import Ingestor
        from rag.records import EmbeddingCache

        self.path.mkdir(parents=True, exist_ok=True)
        with self.lock():
            s = self.settings
            m = self.manifest
            size = (
                s.chunk_size
                if s.chunk_size is not None
                else (m.chunk_size if m else DEFAULT_CHUNK_SIZE)
            )
            overlap = (
                s.chunk_overlap
                if s.chunk_overlap is not None
                else (m.chunk_overlap if m else DEFAULT_CHUNK_OVERLAP)
            )
            chunk_settings = ChunkerSettings(size, overlap)
            rechunk = m is not None and (m.chunk_size, m.chunk_overlap) != (size, overlap)
            if m is None or rechunk:
                # A new collection records its embedder, which must be loaded to know it.
                emb = self.embedder
                chunker = Chunker.for_embedder(chunk_settings, emb)
                if m is None:
                    m = Manifest(
                        self.name,
                        s.store,
                        emb.id,
                        emb.backend,
                        emb.dim,
                        emb.max_tokens,
                        chunker.size,
                        chunker.overlap,
                        versions=_versions(),
                    )
                m.chunk_size, m.chunk_overlap = chunker.size, chunker.overlap
                m.save(self.path / "manifest.json")
                self.manifest = m

            def make_chunker() -> Chunker:
                return Chunker.for_embedder(chunk_settings, self.embedder)

            def ingestor() -> Ingestor:
                return Ingestor(
                    store=self.store,
                    records=self.records,
                    embedder=lambda: self.embedder,
                    chunker=make_chunker,
                    cache=cache,
                    max_file_bytes=s.max_file_bytes,
                    rechunk=rechunk,
                )

            cache = EmbeddingCache(
                s.data_dir / "cache" / "embeddings.sqlite",
                f"{m.embed_model}|{m.embed_backend}",
                m.dim,
            )
            try:
                try:
                    report = ingestor().run(
                        paths, include=include, exclude=exclude, cleanup=cleanup, progress=progress
                    )
                except StoreCorruptedError as e:
                    extra = self._rebuild(e)
                    report = ingestor().run(
                        [*paths, *extra],
                        include=include,
                        exclude=exclude,
                        cleanup=cleanup,
                        progress=progress,
                    )
            finally:
                cache.close()
            if report.chunks or report.deleted:
                self._refresh_bm25()
            m.last_ingest = {
                "time": time.time(),
                "paths": [str(Path(p).absolute()) for p in paths],
                **{k: v for k, v in report.to_json().items() if k != "failed"},
                "failed": len(report.failed),
            }
            m.versions = _versions()
            m.save(self.path / "manifest.json")
        return report

    def _rebuild(self, error: StoreCorruptedError) -> list[str]:
        """Empty a damaged collection so that the ingest re-adds every source; returns the
        recorded sources that still exist, to ingest along with the paths asked for."""
        logger.warning("%s; rebuilding %r from its sources", error, self.name)
        sources = [r.source for r in self.records.all() if Path(r.source).exists()]
        self.store.drop()
        self._store = None
        self._retriever = None
        self.records.clear()
        return sources

    def _refresh_bm25(self) -> None:
        # Keep the keyword index in step with the collection when it is in use (it exists)
        # or cheap to build; otherwise it is built on first use.
        import importlib.util

        if importlib.util.find_spec("bm25s") is None:
            return
        if (self.path / "bm25").exists() or self.store.count() <= 200_000:
            self.retriever.rebuild_bm25()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The collection's write lock; a second writer gets :class:`LockedError` at once."""
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

    @property
    def retriever(self) -> Any:
        if self._retriever is None:
            from rag.retrieval import Retriever

            self._retriever = Retriever(
                self.store,
                self.embedder,
                bm25_dir=self.path / "bm25",
                stamp=lambda: f"{self.settings.store}:{self.records.version()}",
                embed_texts=self._cached_embed,
            )
        return self._retriever

    def _cached_embed(self, texts: Sequence[str]) -> Any:
        """Vectors for chunk texts, from the embedding cache where possible."""
        import hashlib

        import numpy as np

        from rag.records import EmbeddingCache

        emb = self.embedder
        cache = EmbeddingCache(
            self.settings.data_dir / "cache" / "embeddings.sqlite",
            f"{emb.id}|{emb.backend}",
            emb.dim,
        )
        try:
            hashes = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
            found = cache.lookup(hashes)
            out = np.empty((len(texts), emb.dim), dtype=np.float32)
            missing = [i for i, h in enumerate(hashes) if h not in found]
            for i, h in enumerate(hashes):
                if h in found:
                    out[i] = np.frombuffer(found[h], dtype=np.float32)
            if missing:
                out[missing] = emb.embed([texts[i] for i in missing])
            return out
        finally:
            cache.close()

    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        where: Filter | dict | str | None = None,
        mode: str | None = None,
        mmr: bool = False,
    ) -> list[Hit]:
        """The ``k`` best passages for ``query`` (see :mod:`rag.retrieval` for the modes)."""
        return self.retriever.search(
            query,
            k=k or self.settings.k,
            where=parse(where),
            mode=mode or self.settings.mode,
            mmr=mmr,
        )

    def ask(
        self,
        question: str,
        *,
        k: int | None = None,
        where: Filter | dict | str | None = None,
        mode: str | None = None,
        mmr: bool = False,
        history: Sequence[tuple[str, str]] = (),
        generator: Any = None,
        on_token: Callable[[str], None] | None = None,
    ) -> Answer:
        """Retrieve passages for ``question`` and answer from them, citing them as [n]."""
        from rag.generation import answer, load_generator

        gen = generator or load_generator(self.settings, embed=self.embedder.embed)
        t0 = time.perf_counter()
        query = gen.rewrite_question(question, history) if history else question
        t1 = time.perf_counter()
        hits = self.search(query, k=k, where=where, mode=mode, mmr=mmr)
        t2 = time.perf_counter()
        result = answer(
            gen, question, hits, history=history, on_token=on_token, embed=self.embedder.embed
        )
        result.timings.update({"rewrite": t1 - t0, "retrieve": t2 - t1})
        result.query = query
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
            "created": None if m is None else m.created,
            "last_ingest": None if m is None else m.last_ingest,
        }

    def close(self) -> None:
        for part in (self._store, self._records):
            if part is not None:
                part.close()
        self._store = self._records = self._retriever = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_model_id(name: str, resolver: Callable[[str], tuple[str, str]]) -> str:
    try:
        return resolver(name)[0]
    except Exception:
        return name


def open_collection(settings: Settings, *, create: bool = False) -> Collection:
    """The collection ``settings.collection`` in ``settings.store``."""
    return Collection(settings, create=create)


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
    from rag.records import RecordStore

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


def drop_collection(settings: Settings, name: str) -> None:
    """Delete a collection from its store and its record from the data directory."""
    s = settings.with_(collection=name)
    col = Collection(s)
    with col.lock():
        col.store.drop()
        col._store = None
        col.close()
    shutil.rmtree(col.path, ignore_errors=True)
