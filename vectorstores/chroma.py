"""Chroma: an embedded ``PersistentClient`` by default, a Chroma server with ``config.url``.

Each ragkit collection is one Chroma collection named ``ragkit_<name>`` (Chroma wants 3-512
characters that start and end with a letter or digit; a name ending in ``-`` or ``_`` gets
``.x`` appended, and since ragkit names never hold a dot the mapping stays one-to-one). The
collection is created in cosine space with ``embedding_function=None``: ragkit always
passes its own vectors, and Chroma's default embedder would try to download a model. Its
metadata records ``ragkit:dim``, so opening it with another dimension fails at once.
Chroma reports cosine *distance*; ``Hit.score`` is ``1 - distance``, the cosine similarity.

Filters are translated by :mod:`vectorstores.chroma_filters`, which needs two internal
lists on every record: its field names (``ragkit:keys``) and its numeric fields
(``ragkit:num``). Both are stripped from what ``get``, ``search`` and ``scan`` return; no
user key can take their names (``:`` is not allowed in keys). Every operator is supported.
Chroma keeps 64-bit integers and any key the metadata rule allows exactly; chromadb 1.5
changes the last digit of about one double in ten that need 15 or more significant digits
(``0.9097462559682401`` comes back, and is filtered on, as ``0.90974625596824``;
``tests/test_chroma.py::test_doubles_are_kept_exactly`` tracks it), while short decimals
such as ``2.5`` or ``0.1234`` are kept exactly.

Chroma's ``upsert`` merges metadata into an existing record, so a replacement first reads
the old keys and deletes the ones that are gone (a ``None`` value). Writes are cut into
batches of ``client.get_max_batch_size()``; each batch is atomic, a larger call is not.

Filtered search is Chroma's own (pre-filtered HNSW, exact for small selections). If it ever
returns fewer hits than ``min(k, matching)``, the matching records are ranked exactly here
instead, reading their vectors page by page.

The embedded engine opens its SQLite database for writing even to search, so a folder this
process cannot write to (a read-only mount, say) raises :class:`~rag.errors.StoreError`
saying so when a store is opened on it.

The embedded engine keeps one client per folder per process; this module shares it between
the collections open on that folder and releases it when the last one closes. A process
only sees what another process wrote to the folder after all its stores on that folder
were closed and one is opened again (until then its searches may fail or miss the new
records): use a Chroma server when several processes write.

``config.url`` is ``http(s)://host[:port][?tenant=...&database=...]``, its token comes from
``CHROMA_AUTH_TOKEN``; the client for a server, with its timeouts and its retries with
backoff on transient errors, is :mod:`vectorstores.chroma_server`. A server that stays away
through the retries (down, or gone mid-search) is a :class:`~rag.errors.StoreError` that
names its address and says it cannot be reached.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rag.contract import check_collection_name
from rag.errors import (
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    RagError,
    StoreCorruptedError,
    StoreError,
)
from rag.filters import ALL_OPS, Filter, evaluate, superset
from rag.store import (
    Capabilities,
    StoreBase,
    StoreConfig,
    batched,
    folder_writable,
    read_options,
)
from rag.types import Chunk, Hit
from vectorstores.chroma_filters import (
    KEYS,
    NUM,
    exact_in_chroma,
    inexact_in_chroma,
    to_where,
)
from vectorstores.chroma_server import (
    ServerAddress,
    http_client,
    parse_url,
    unreachable_message,
)
from vectorstores.retry import Unreachable

__all__ = ["ChromaStore", "ServerAddress", "chroma_name", "parse_url"]

# Chroma's own HNSW defaults; hnsw_m is Chroma's "max_neighbors".
_DEFAULTS: dict[str, int] = {"hnsw_m": 16, "ef_construction": 100, "ef_search": 100}
_PREFIX = "ragkit_"
_DIM_KEY = "ragkit:dim"
_FORMAT_KEY = "ragkit:format"
_INTERNAL = (KEYS, NUM)  # stripped from what the caller gets back
_FORMAT = 1
_DEFAULT_BATCH = 5461  # what chromadb 1.5 reports; the client's own value is used when known


def chroma_name(collection: str) -> str:
    """The Chroma collection name for a ragkit collection name (deterministic, one-to-one)."""
    name = _PREFIX + check_collection_name(collection)
    return name if collection[-1].isalnum() else name + ".x"


# --- clients, shared per folder or server within the process ---------------------------------


_clients: dict[tuple[str, str], list[Any]] = {}  # key -> [client, number of stores using it]
_clients_lock = threading.Lock()


def _chromadb() -> Any:
    import chromadb

    # Chroma logs routine events (e.g. clamped n_results) as warnings; keep them from users
    # unless they configured the logger themselves.
    for name in ("chromadb", "chromadb.telemetry"):
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.ERROR)
    return chromadb


def _client_key(config: StoreConfig) -> tuple[str, str]:
    if config.url:
        return ("url", config.url.strip())
    return ("path", str(Path(config.data_dir).expanduser().resolve()))


def _new_client(key: tuple[str, str]) -> Any:
    chromadb = _chromadb()
    from chromadb.config import Settings

    kind, where = key
    if kind == "url":
        return http_client(parse_url(where))
    Path(where).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(
        path=where, settings=Settings(anonymized_telemetry=False, allow_reset=False)
    )


def _acquire_client(key: tuple[str, str]) -> Any:
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            try:
                entry = [_new_client(key), 0]
            except RagError:
                raise
            except Unreachable as u:
                raise StoreError(f"chroma: {unreachable_message(parse_url(key[1]), u)}") from u
            except Exception as e:
                raise StoreError(f"chroma: cannot open a client for {key[1]}: {e}") from e
            _clients[key] = entry
        entry[1] += 1
        return entry[0]


def _release_client(key: tuple[str, str]) -> None:
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _clients[key]
    # Chroma stops the engine once no client of its own holds it either. Best effort:
    # every write has already been committed.
    with suppress(Exception):
        entry[0].close()


# --- the store -------------------------------------------------------------------------------


class ChromaStore(StoreBase):
    """One collection in a Chroma folder (``config.data_dir``) or on a server (``config.url``)."""

    name: ClassVar[str] = "chroma"
    capabilities: ClassVar[Capabilities] = Capabilities(
        filter_ops=ALL_OPS, exact_search=False, max_batch_size=_DEFAULT_BATCH
    )
    description: ClassVar[str] = "Chroma: embedded PersistentClient, or a server with --store-url"

    def __init__(
        self, collection: str, *, dim: int, config: StoreConfig, create: bool = True
    ) -> None:
        self.collection = collection
        self.chroma_name = chroma_name(collection)
        opts = read_options(config.options, _DEFAULTS, backend=self.name)
        for key, value in opts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"chroma option {key}={value!r} must be a positive integer")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self._opts = opts
        self._lock = threading.RLock()
        self._key = _client_key(config)
        if self._key[0] == "path" and not folder_writable(Path(self._key[1])):
            raise StoreError(
                f"chroma collection {collection!r}: the folder {self._key[1]} is read-only, "
                "and the embedded Chroma opens its database for writing even to search; copy "
                "the folder somewhere writable, or serve it from a Chroma server (--store-url)"
            )
        self._client: Any = _acquire_client(self._key)
        try:
            with self._errors("open"):
                self._batch = int(self._client.get_max_batch_size())
            self.capabilities = Capabilities(
                filter_ops=ALL_OPS, exact_search=False, max_batch_size=self._batch
            )
            self._col = self._open(create, explicit=set(config.options))
        except BaseException:
            _release_client(self._key)
            self._client = None
            raise

    def _describe(self) -> str:
        return f"chroma collection {self.collection!r} ({self.chroma_name} in {self._key[1]})"

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn driver errors into StoreError naming the backend and the collection."""
        try:
            yield
        except RagError:
            raise
        except Unreachable as u:
            raise self._unreachable(action, u) from u
        except Exception as e:
            hint = ""
            if self._key[0] == "path" and "Failed to apply logs" in str(e):
                # A write interrupted by SIGKILL can leave the embedded HNSW segment torn so
                # that every later operation fails (chroma-core/chroma#7678, seen with 1.5.9).
                raise StoreCorruptedError(
                    f"{self._describe()} was damaged by an interrupted write ({e}); run "
                    "`rag ingest` on its folder again to rebuild it from the files (vectors come "
                    "from the embedding cache, nothing is re-embedded)"
                ) from e
            if self._key[0] == "path" and type(e).__name__ == "InternalError":
                # The embedded engine's in-memory index misses what another process wrote.
                hint = (
                    "; if another process wrote to this folder, close and reopen the store "
                    "(or use a Chroma server for several writers)"
                )
            raise StoreError(f"{self._describe()}: {action} failed: {e}{hint}") from e

    def _unreachable(self, action: str, u: Unreachable) -> StoreError:
        message = unreachable_message(parse_url(self._key[1]), u)
        return StoreError(f"chroma collection {self.collection!r}: {action} failed: {message}")

    def _open(self, create: bool, explicit: set[str]) -> Any:
        from chromadb.errors import NotFoundError

        client = self._client
        try:
            col = client.get_collection(self.chroma_name, embedding_function=None)
        except NotFoundError:
            col = None
        except Unreachable as u:
            raise self._unreachable("open", u) from u
        except Exception as e:
            raise StoreError(f"{self._describe()}: open failed: {e}") from e
        if col is None:
            if not create:
                raise CollectionNotFoundError(f"{self._describe()} does not exist")
            hnsw = {
                "space": "cosine",
                "max_neighbors": int(self._opts["hnsw_m"]),
                "ef_construction": int(self._opts["ef_construction"]),
                "ef_search": int(self._opts["ef_search"]),
            }
            try:
                return client.create_collection(
                    self.chroma_name,
                    embedding_function=None,
                    configuration={"hnsw": hnsw},
                    metadata={_DIM_KEY: self.dim, _FORMAT_KEY: _FORMAT},
                )
            except Unreachable as u:
                raise self._unreachable("create", u) from u
            except Exception as e:  # another process may have created it meanwhile
                try:
                    col = client.get_collection(self.chroma_name, embedding_function=None)
                except Exception:
                    raise StoreError(f"{self._describe()}: create failed: {e}") from e
        self._check_existing(col, explicit)
        return col

    def _check_existing(self, col: Any, explicit: set[str]) -> None:
        meta = col.metadata or {}
        if _DIM_KEY not in meta:
            raise StoreError(
                f"{self._describe()} was not created by ragkit (no {_DIM_KEY} in its metadata); "
                "choose another collection name"
            )
        stored = int(meta[_DIM_KEY])
        if stored != self.dim:
            raise DimensionMismatchError(
                f"chroma collection {self.collection!r} holds {stored}-dimensional vectors, "
                f"not {self.dim}; use the embedder that built it, or ingest into a new collection"
            )
        hnsw = dict((col.configuration or {}).get("hnsw") or {})
        if hnsw.get("space", "cosine") != "cosine":
            raise StoreError(f"{self._describe()} uses the {hnsw.get('space')} space, not cosine")
        # Construction parameters are fixed when the collection is made; ef_search can change.
        for opt, field in (("hnsw_m", "max_neighbors"), ("ef_construction", "ef_construction")):
            if opt in explicit and field in hnsw and int(hnsw[field]) != int(self._opts[opt]):
                raise ConfigError(
                    f"{self._describe()} was built with {opt}={hnsw[field]}, which cannot change; "
                    f"drop the option or ingest into a new collection"
                )
        if "ef_search" in explicit and hnsw.get("ef_search") != self._opts["ef_search"]:
            with self._errors("set ef_search"):
                col.modify(configuration={"hnsw": {"ef_search": int(self._opts["ef_search"])}})

    def _collection(self) -> Any:
        if self._client is None:
            raise StoreError(f"chroma collection {self.collection!r} is closed")
        return self._col

    # --- writes ----------------------------------------------------------------------------

    def _upsert(self, chunks: list[Chunk], vecs: np.ndarray) -> None:
        metas = [_stored_metadata(c.metadata) for c in chunks]
        col = self._collection()
        with self._lock:
            for start in range(0, len(chunks), self._batch):
                part = chunks[start : start + self._batch]
                ids = [c.id for c in part]
                new = dict(zip(ids, metas[start : start + self._batch], strict=True))
                with self._errors("upsert"):
                    # Chroma's upsert merges into the old metadata: delete the keys that go.
                    old = col.get(ids=ids, include=["metadatas"])
                    for cid, meta in zip(old["ids"], old["metadatas"], strict=True):
                        gone = [key for key in meta or {} if key not in (new[cid] or {})]
                        if gone:
                            new[cid] = {**(new[cid] or {}), **dict.fromkeys(gone)}
                    col.upsert(
                        ids=ids,
                        embeddings=vecs[start : start + len(part)],
                        documents=[c.text for c in part],
                        metadatas=[new[cid] for cid in ids],
                    )

    def _delete(self, ids: list[str]) -> None:
        col = self._collection()
        with self._lock:
            for part in batched(ids, self._batch):
                with self._errors("delete"):
                    col.delete(ids=list(part))

    # --- reads -----------------------------------------------------------------------------

    def _search(self, q: np.ndarray, k: int, where: Filter | None) -> list[Hit]:
        col = self._collection()
        if where is not None and not exact_in_chroma(where):
            return self._checked_search(col, q, k, where)
        native = to_where(where) if where is not None else None
        with self._errors("search"):
            total = col.count()
            if total == 0:
                return []
            n = min(k, total)
            res = col.query(
                query_embeddings=q.reshape(1, -1),
                n_results=n,
                where=native,
                include=["documents", "metadatas", "distances"],
            )
            hits = [
                Hit(cid, 1.0 - float(dist), Chunk(cid, doc or "", _user_metadata(meta)))
                for cid, doc, meta, dist in zip(
                    res["ids"][0],
                    res["documents"][0],
                    res["metadatas"][0],
                    res["distances"][0],
                    strict=True,
                )
            ]
            if len(hits) >= n:
                return hits
            # HNSW came back short: rank the matching records exactly, if there are more.
            if native is not None:
                matching = len(col.get(where=native, include=[])["ids"])
                if len(hits) >= min(n, matching):
                    return hits
            return self._exact_search(col, q, n, native)

    def _checked_search(self, col: Any, q: np.ndarray, k: int, where: Filter) -> list[Hit]:
        """A filter Chroma would answer inexactly (numbers past 2**53): the records of a
        superset it answers exactly, kept by the reference evaluator, ranked exactly."""
        relaxed = superset(where, inexact_in_chroma)
        if relaxed is False:
            return []
        native = None if relaxed is True else to_where(relaxed)  # type: ignore[arg-type]
        with self._errors("search"):
            return self._exact_search(col, q, k, native, keep=where)

    def _exact_search(
        self, col: Any, q: np.ndarray, k: int, native: dict | None, keep: Filter | None = None
    ) -> list[Hit]:
        qn = q / max(float(np.linalg.norm(q)), 1e-12)
        best_ids: list[str] = []
        best = np.empty(0, dtype=np.float32)
        offset = 0
        include = ["embeddings", "metadatas"] if keep is not None else ["embeddings"]
        while True:
            page = col.get(where=native, include=include, limit=self._batch, offset=offset)
            if not page["ids"]:
                break
            offset += len(page["ids"])
            emb = np.asarray(page["embeddings"], dtype=np.float32)
            page_ids = list(page["ids"])
            if keep is not None:
                rows = [
                    i
                    for i, meta in enumerate(page["metadatas"])
                    if evaluate(keep, _user_metadata(meta))
                ]
                emb, page_ids = emb[rows].reshape(-1, self.dim), [page_ids[i] for i in rows]
                if not page_ids:
                    continue
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            ids = best_ids + page_ids
            scores = np.concatenate([best, emb @ qn])
            top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
            top = top[np.argsort(-scores[top], kind="stable")]
            best_ids, best = [ids[i] for i in top], scores[top]
        chunks = {c.id: c for c in self._fetch(col, best_ids)}
        return [
            Hit(i, float(s), chunks[i]) for i, s in zip(best_ids, best, strict=True) if i in chunks
        ]

    def _get(self, ids: list[str]) -> list[Chunk]:
        col = self._collection()
        with self._errors("get"):
            found = {c.id: c for c in self._fetch(col, ids)}
        return [found[i] for i in ids if i in found]

    def _fetch(self, col: Any, ids: list[str]) -> list[Chunk]:
        out: list[Chunk] = []
        for part in batched(list(dict.fromkeys(ids)), self._batch):
            res = col.get(ids=list(part), include=["documents", "metadatas"])
            out.extend(
                Chunk(cid, doc or "", _user_metadata(meta))
                for cid, doc, meta in zip(
                    res["ids"], res["documents"], res["metadatas"], strict=True
                )
            )
        return out

    def count(self) -> int:
        col = self._collection()
        with self._errors("count"):
            return int(col.count())

    def _scan(self, batch_size: int) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        size = min(batch_size, self._batch)
        col = self._collection()
        offset = 0
        while True:
            with self._errors("scan"):
                res = col.get(
                    include=["documents", "metadatas", "embeddings"], limit=size, offset=offset
                )
            if not res["ids"]:
                return
            offset += len(res["ids"])
            chunks = [
                Chunk(cid, doc or "", _user_metadata(meta))
                for cid, doc, meta in zip(
                    res["ids"], res["documents"], res["metadatas"], strict=True
                )
            ]
            yield (
                chunks,
                np.asarray(res["embeddings"], dtype=np.float32).reshape(len(chunks), self.dim),
            )

    # --- lifetime --------------------------------------------------------------------------

    def drop(self) -> None:
        with self._lock:
            if self._client is None:
                raise StoreError(f"chroma collection {self.collection!r} is closed")
            try:
                with self._errors("drop"):
                    self._client.delete_collection(self.chroma_name)
            finally:
                self.close()

    def close(self) -> None:
        with self._lock:
            if self._client is None:
                return
            self._client = None
            self._col = None
            _release_client(self._key)


# --- metadata: what ragkit stores beside the user's fields ----------------------------------


def _stored_metadata(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    if not meta:
        return None  # Chroma refuses an empty dict
    out: dict[str, Any] = dict(meta)
    out[KEYS] = sorted(meta)
    numeric = sorted(
        k for k, v in meta.items() if isinstance(v, int | float) and not isinstance(v, bool)
    )
    if numeric:
        out[NUM] = numeric
    return out


def _user_metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    if not meta:
        return {}
    return {k: v for k, v in meta.items() if k not in _INTERNAL}
