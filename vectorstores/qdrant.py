"""Qdrant: its engine in process by default, qdrant-client's local mode, or a server.

Which engine runs, and why:

* ``edge``, the default when no URL is given: qdrant-edge runs Qdrant's own Rust engine in
  this process. A collection is one shard folder, ``data_dir/<collection>``, with a
  write-ahead log, HNSW segments and payload indexes, searched with the same planner as a
  Qdrant server (filtered HNSW, payload-index scans for selective filters). It serves real
  collections: at 50k-100k 384-d vectors it takes 12k-25k vectors/s, answers in about a
  millisecond once indexed (an exact scan: 6-11 ms) and reopens in a third of a second.
* ``local`` (option ``engine=local``): qdrant-client's local mode, a pure-Python exact scan
  that keeps every point in memory. Its authors advise against it past 20,000 points (about
  1,000 inserts/s, 36 ms a query and 13 s to reopen at 100k), so ragkit logs one warning
  when a collection grows past that. Kept for comparison in benchmarks, and as a second,
  independent implementation of Qdrant's filter semantics; its search is exact.
* a Qdrant server, when ``config.url`` is set: qdrant-client over HTTP, with the API key
  from ``QDRANT_API_KEY`` only. Local mode and servers share one implementation (the client
  API is the same); ``engine`` may then be left out or set to ``server``.

Points: a chunk id that is a canonical UUID is the point id; any other string maps to a
``uuid5`` and is kept in the payload. The payload holds the metadata under its own keys, plus
``ragkit:text`` and, for mapped ids, ``ragkit:id`` (names no metadata key can take: the rule
allows no ``:``). Qdrant keeps 64-bit integers exactly, and doubles on local mode; qdrant-edge
0.9 changes the last digit of about one double in ten that need 15 or more significant
digits (``0.9655443552261345`` comes back, and is filtered on, as ``0.9655443552261344``;
``tests/test_qdrant.py::test_edge_keeps_doubles_exactly`` tracks it), while short decimals
such as ``2.5`` or ``0.1234`` are kept exactly.
Vectors come back from ``scan`` normalised, as Qdrant stores them for cosine distance.

Index building (edge). The engine has no background optimizer: points land in a plain
segment that is searched exactly (20k 384-d vectors: about 2 ms a query) until
``optimize()`` builds HNSW, which blocks the whole process (it keeps the GIL). ragkit calls
it when the vectors written since the last build pass ``AUTO_OPTIMIZE_BYTES`` (30 MiB:
20,480 vectors of 384 dimensions) or ``AUTO_OPTIMIZE_GROWTH`` (half) of the points the last
build covered, whichever is more; in ``close()`` after any write; and on demand through
:meth:`QdrantStore.optimize`. Qdrant extends its graph rather than rebuilding it, but each
build merges everything into a new segment and the process keeps the old segments' files
mapped until it closes the shard, so builds at a fixed step cost a copy of the collection
each time: a bulk load of 400k clustered 384-d vectors took 188 s and peaked at 7.8 GB RSS
that way (14 builds), against 176 s and 3.9 GB with the growing step (7 builds) and 160 s
and 2.3 GB with one build at the end (2 cores, ``python -m eval.qdrant_edge``).
Segments under Qdrant's indexing threshold (10 MB of vectors) stay plain, as on a server.
Writes are durable through the engine's write-ahead log before ``close()``.

Both embedded engines open their files for writing even to search (qdrant-edge maps its
payload storage writable, local mode takes a lock file), so a collection folder this
process cannot write to (a read-only mount, say) raises :class:`~rag.errors.StoreError`
saying so when the store is opened; serve such a folder from a Qdrant server instead.

Filters are translated in :mod:`vectorstores.qdrant_filters` with the reference semantics
(keys such as ``Header 1`` are quoted there). Payload indexes (edge and server; local mode
has none) are made by writes, never by searches, so that reading a collection never changes
it (nor fails on a read-only folder or with a read-only API key): ``source``, ``file_type``,
``page`` and ``mtime`` when a collection is created, and the fields named in the
``index_fields`` option (``--store-opt index_fields=lang,year:float``; the type is
``keyword``, ``float`` or ``bool``, or taken from the values written) by the first write
that carries them. A filter on a field without an index of the kind its operands need is
answered by an exact search: Qdrant's filtered HNSW walks blind without the index (recall@10
of 0.07 for a filter matching 10% of 10k clustered points). With the indexes, Qdrant counts
the matches and ranks small selections exactly, and walks HNSW for broad ones. A filter
comparing with a number of 2**53 or more, which Qdrant compares as a double, is answered by
scanning the points of a superset it answers exactly with the reference evaluator
(:mod:`vectorstores.qdrant_filters`). The indexes are made
without payload-aware HNSW links (``enable_hnsw=false``): those tripled the HNSW build
(30k clustered 384-d vectors: 70 s against 26 s) to lift recall@10 of broad filters (30%
of the points) from 0.93-0.98 to 1.0. Filtered HNSW searches on edge use ACORN (the
traversal also looks at the neighbours of nodes the filter rejects): without it, a filter
matching 10% of 100k clustered 384-d vectors, spread evenly through the graph, found 0.18
of the true top 10; with it 0.998, at 2.6 ms a query instead of 0.6 ms (Qdrant's default
ef; ``python -m eval.qdrant_edge``). A filtered search that
still returns fewer than ``k`` hits counts the matches and, if there are more, searches
them exactly. Searches on a server do not ask for ACORN (servers before 1.16 lack it).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rag.contract import key_problem
from rag.errors import (
    ConfigError,
    LockedError,
    RagError,
    StoreError,
)
from rag.filters import ALL_OPS, Filter, evaluate, superset
from rag.store import Capabilities, StoreBase, StoreConfig, folder_writable, read_options
from rag.types import Chunk, Hit
from vectorstores.qdrant_engines import ClientEngine, EdgeEngine, Spec
from vectorstores.qdrant_filters import (
    exact_in_qdrant,
    fully_indexed,
    inexact_in_qdrant,
    translate,
)

log = logging.getLogger(__name__)

# Qdrant's defaults: m 16, ef_construct 100; ef_search 0 means "as ef_construct".
_DEFAULTS: dict[str, str | int | bool] = {
    "engine": "",
    "hnsw_m": 16,
    "ef_construction": 100,
    "ef_search": 0,
    "exact": False,
    "index_fields": "",
}
_HNSW_OPTIONS = ("hnsw_m", "ef_construction", "ef_search")

TEXT_KEY = "ragkit:text"
ID_KEY = "ragkit:id"
_ID_NAMESPACE = uuid.UUID("6f1c3d2e-58b4-4b7e-9a43-0d6f2f4c9a11")  # fixed forever: ids depend on it
_BATCH = 512  # points per write or read call


# Local mode warns through `warnings` past 20,000 points; ragkit logs one line instead.
warnings.filterwarnings("ignore", message=r"Local mode is not recommended", category=UserWarning)


def point_id(chunk_id: str) -> str:
    """The Qdrant point id of a chunk id: itself if it is a canonical UUID, else a uuid5."""
    try:
        if str(uuid.UUID(chunk_id)) == chunk_id:
            return chunk_id
    except (ValueError, TypeError, AttributeError):
        pass
    return str(uuid.uuid5(_ID_NAMESPACE, chunk_id))


def connect_server(url: str) -> Any:
    """A qdrant-client for the server at ``url``; the API key comes from the environment."""
    from qdrant_client import QdrantClient

    return QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None)


class QdrantStore(StoreBase):
    """One Qdrant collection, on the engine chosen by ``config`` (see the module docstring).

    Options: ``engine`` (``edge`` | ``local`` | ``server``; default ``edge``, or ``server``
    with a URL), ``hnsw_m`` and ``ef_construction`` (applied when a collection is created),
    ``ef_search`` (0: as ``ef_construction``), ``exact`` (search without HNSW) and
    ``index_fields`` (payload indexes for writes to make: ``field[:type],...``).
    """

    name: ClassVar[str] = "qdrant"
    capabilities: ClassVar[Capabilities] = Capabilities(filter_ops=ALL_OPS, exact_search=False)
    description: ClassVar[str] = (
        "Qdrant: its engine in process (qdrant-edge), or a server with --store-url"
    )

    def __init__(
        self, collection: str, *, dim: int, config: StoreConfig, create: bool = True
    ) -> None:
        self.collection = collection  # checked before it becomes a path or a name
        opts = read_options(config.options, _DEFAULTS, backend=self.name)
        engine = str(opts["engine"]).strip().lower() or ("server" if config.url else "edge")
        if engine not in ("edge", "local", "server"):
            raise ConfigError(
                f"qdrant option engine={opts['engine']!r}: choose edge, local or server"
            )
        if config.url and engine != "server":
            raise ConfigError(
                f"qdrant engine={engine} runs in this process, but a server URL is set "
                f"({config.url}); drop the engine option to use the server"
            )
        if engine == "server" and not config.url:
            raise ConfigError("qdrant engine=server needs the server's URL (--store-url)")
        if engine == "local" and set(_HNSW_OPTIONS) & set(config.options):
            raise ConfigError(
                "qdrant local mode searches exactly and has no HNSW options; use engine=edge"
            )
        if engine == "local" and "index_fields" in config.options:
            raise ConfigError(
                "qdrant local mode has no payload indexes (index_fields); use engine=edge"
            )
        if (
            int(opts["hnsw_m"]) < 2
            or int(opts["ef_construction"]) < 4
            or int(opts["ef_search"]) < 0
        ):
            raise ConfigError(
                "qdrant options need hnsw_m >= 2, ef_construction >= 4, ef_search >= 0"
            )
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"dimension must be a positive integer, got {dim!r}")
        self._declared = index_fields(str(opts["index_fields"]))

        self.dim = dim
        self.engine = engine
        self.path: Path | None = None if engine == "server" else Path(config.data_dir) / collection
        if self.path is not None:
            folder = self.path if self.path.exists() else Path(config.data_dir)
            if not folder_writable(folder):
                raise StoreError(
                    f"qdrant ({engine}) collection {collection!r}: the folder {folder} is "
                    "read-only, and the embedded engine opens its files for writing even to "
                    "search; copy the folder somewhere writable, or serve it from a Qdrant "
                    "server (--store-url)"
                )
        self._lock = threading.RLock()
        self._closed = False
        if bool(opts["exact"]) or engine == "local":
            self.capabilities = Capabilities(filter_ops=ALL_OPS, exact_search=True)
        spec = Spec(
            collection=collection,
            dim=dim,
            engine=engine,
            path=self.path,
            url=config.url,
            create=create,
            hnsw_m=int(opts["hnsw_m"]),
            ef_construction=int(opts["ef_construction"]),
            ef_search=int(opts["ef_search"]),
            exact=bool(opts["exact"]),
            explicit=frozenset(config.options),
        )
        try:
            if engine == "edge":
                self._engine: EdgeEngine | ClientEngine = EdgeEngine(spec)
            elif engine == "local":
                self._engine = ClientEngine.local_mode(spec)
            else:
                self._engine = ClientEngine(spec, connect_server(str(config.url)))
        except RagError:
            raise
        except Exception as e:
            raise _wrapped(e, self, "open") from e
        self._indexed = dict(self._engine.indexed)
        self._unindexable: set[str] = set()

    # --- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _op(self, what: str) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreError(f"qdrant collection {self.collection!r} is closed")
            try:
                yield
            except RagError:
                raise
            except Exception as e:
                raise _wrapped(e, self, what) from e

    def _declared_indexes(self, chunks: list[Chunk]) -> dict[str, str]:
        """The declared payload indexes still missing that a write of ``chunks`` makes: for
        the fields it carries, of the declared type or of the one kind of value they hold."""
        wanted: dict[str, str] = {}
        for field, schema in self._declared.items():
            if field in self._indexed or field in self._unindexable:
                continue
            kinds = {_kind(c.metadata[field]) for c in chunks if field in c.metadata}
            if schema is None and len(kinds) == 1:
                schema = next(iter(kinds))
            if kinds and schema is not None:
                wanted[field] = schema
        return wanted

    def _ensure_indexes(self, wanted: dict[str, str]) -> None:
        """Create the payload indexes that are missing (edge and server); writes only."""
        if not self._engine.supports_indexes:
            return
        for field, schema in wanted.items():
            if field in self._indexed or field in self._unindexable:
                continue
            try:
                self._engine.create_index(field, schema)
            except Exception as e:  # a read-only API key, say: filter unindexed
                self._unindexable.add(field)
                log.warning(
                    "qdrant collection %r: no %s index for %r (%s); filtering without it",
                    self.collection,
                    schema,
                    field,
                    e,
                )
            else:
                self._indexed[field] = schema

    @staticmethod
    def _payload(chunk: Chunk, pid: str) -> dict[str, Any]:
        payload: dict[str, Any] = dict(chunk.metadata)
        payload[TEXT_KEY] = chunk.text
        if pid != chunk.id:
            payload[ID_KEY] = chunk.id
        return payload

    @staticmethod
    def _chunk(pid: Any, payload: dict[str, Any] | None) -> Chunk:
        meta = dict(payload or {})
        text = meta.pop(TEXT_KEY, "")
        cid = meta.pop(ID_KEY, None)
        return Chunk(str(pid) if cid is None else cid, text, meta)

    # --- the contract ------------------------------------------------------------------------

    def _upsert(self, chunks: list[Chunk], vecs: np.ndarray) -> None:
        ids = [point_id(c.id) for c in chunks]
        payloads = [self._payload(c, pid) for c, pid in zip(chunks, ids, strict=True)]
        with self._op("upsert"):
            if self._declared:
                self._ensure_indexes(self._declared_indexes(chunks))
            for start in range(0, len(ids), _BATCH):
                end = start + _BATCH
                self._engine.upsert(ids[start:end], vecs[start:end], payloads[start:end])
            self._engine.after_write(len(ids))

    def _delete(self, ids: list[str]) -> None:
        pids = list(dict.fromkeys(point_id(i) for i in ids))
        with self._op("delete"):
            for start in range(0, len(pids), _BATCH):
                self._engine.delete(pids[start : start + _BATCH])
            self._engine.after_write(0)

    def _search(self, q: np.ndarray, k: int, flt: Filter | None) -> list[Hit]:
        if flt is not None and not exact_in_qdrant(flt):
            return self._checked_search(q, k, flt)
        native = translate(flt, self._engine.builder) if flt is not None else None
        # A field without a fitting payload index: search exactly (see the module docstring).
        exact = (
            flt is not None
            and self._engine.supports_indexes
            and not self.capabilities.exact_search
            and not fully_indexed(flt, self._indexed)
        )
        with self._op("search"):  # never makes a payload index: reading changes nothing
            found = self._engine.query(q, k, native, exact=exact)
            if (
                native is not None
                and len(found) < k
                and not exact
                and not self.capabilities.exact_search
            ):
                # Filtered HNSW can strand the walk among non-matching points and come back
                # short (seen at 30% selectivity on fields indexed after the graph was
                # built). The contract is min(k, matching): count, and search exactly if so.
                matching = self._engine.count(native)
                if matching > len(found):
                    log.debug(
                        "qdrant %r: filtered HNSW gave %d of %d; exact search",
                        self.collection,
                        len(found),
                        min(k, matching),
                    )
                    found = self._engine.query(q, k, native, exact=True)
        hits = []
        for pid, score, payload in found:
            chunk = self._chunk(pid, payload)
            hits.append(Hit(chunk.id, float(score), chunk))
        return hits

    def _checked_search(self, q: np.ndarray, k: int, flt: Filter) -> list[Hit]:
        """A filter Qdrant would answer inexactly (numbers of 2**53 or more): the points of a
        superset it answers exactly, kept by the reference evaluator, ranked exactly."""
        relaxed = superset(flt, inexact_in_qdrant)
        if relaxed is False:
            return []
        native = None if relaxed is True else translate(relaxed, self._engine.builder)  # type: ignore[arg-type]
        chunks: list[Chunk] = []
        vectors: list[Any] = []
        offset: Any = None
        with self._op("search"):
            while True:
                records, offset = self._engine.scroll(offset, _BATCH, native)
                for pid, payload, vec in records:
                    chunk = self._chunk(pid, payload)
                    if evaluate(flt, chunk.metadata):
                        chunks.append(chunk)
                        vectors.append(vec)
                if offset is None:
                    break
        if not chunks:
            return []
        scores = np.asarray(vectors, dtype=np.float32).reshape(len(chunks), self.dim) @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(chunks[i].id, float(scores[i]), chunks[i]) for i in order]

    def _get(self, ids: list[str]) -> list[Chunk]:
        pids = list(dict.fromkeys(point_id(i) for i in ids))
        found: dict[str, Chunk] = {}
        with self._op("get"):
            for start in range(0, len(pids), _BATCH):
                for pid, payload in self._engine.retrieve(pids[start : start + _BATCH]):
                    chunk = self._chunk(pid, payload)
                    found[chunk.id] = chunk
        return [found[i] for i in ids if i in found]

    def count(self) -> int:
        with self._op("count"):
            return int(self._engine.count())

    def _scan(self, batch_size: int) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        offset: Any = None
        while True:
            with self._op("scan"):
                records, offset = self._engine.scroll(offset, batch_size)
            if records:
                chunks = [self._chunk(pid, payload) for pid, payload, _ in records]
                vecs = np.asarray([vec for _, _, vec in records], dtype=np.float32).reshape(
                    len(records), self.dim
                )
                yield chunks, vecs
            if offset is None:
                return

    def optimize(self) -> bool:
        """Build the HNSW graph and merge segments now (edge; a server does this itself).
        Returns whether anything changed. Blocks: minutes for hundreds of thousands of
        vectors."""
        with self._op("optimize"):
            return self._engine.optimize()

    def drop(self) -> None:
        with self._op("drop"):
            self._engine.drop()
            self._closed = True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._engine.close()
            except RagError:
                raise
            except Exception as e:
                raise _wrapped(e, self, "close") from e


_SCHEMAS = ("keyword", "float", "bool")


def index_fields(option: str) -> dict[str, str | None]:
    """The ``index_fields`` option, ``field[:type],...``, as ``{field: type or None}``."""
    out: dict[str, str | None] = {}
    for item in option.split(","):
        if not item.strip():
            continue
        field, _, schema = item.strip().partition(":")
        problem = key_problem(field.strip())
        if problem:
            raise ConfigError(f"qdrant option index_fields: {problem}")
        schema = schema.strip().lower()
        if schema and schema not in _SCHEMAS:
            raise ConfigError(
                f"qdrant option index_fields: {item.strip()!r}; the type is one of "
                f"{', '.join(_SCHEMAS)}, or left out to take the values' own"
            )
        out[field.strip()] = schema or None
    return out


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    return "float" if isinstance(value, int | float) else "keyword"


def _wrapped(e: Exception, store: QdrantStore, what: str) -> StoreError:
    text = str(e) or type(e).__name__
    where = f"qdrant ({store.engine}) collection {store.collection!r}"
    if "WouldBlock" in text or "already accessed by another instance" in text:
        return LockedError(f"{where} is open in another process or object; close it first ({text})")
    return StoreError(f"{where}: {what} failed: {text}")
