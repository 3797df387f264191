"""FAISS in process: the embedded default.

Durability comes from SQLite, not from the FAISS file. Each collection is a folder with
``chunks.sqlite`` (ids, texts, metadata and the vectors themselves, written in one
transaction per call, WAL mode) and ``index.faiss``, a snapshot of the in-memory index
saved on close and tagged with the SQLite write generation it reflects. Opening loads the
snapshot when its generation matches and otherwise rebuilds the index from SQLite, so a
process killed at any moment loses nothing that a call had returned from, and never leaves
the two disagreeing. The cost is that vectors are stored twice on disk.

A folder this process cannot write to (a read-only mount, say) opens read-only: SQLite is
opened with ``mode=ro``, no pragma or snapshot is written, the index is built in memory
when the snapshot is stale, and ``upsert``, ``delete`` and ``drop`` raise
:class:`~rag.errors.StoreError`. SQLite cannot open a WAL database read-only without its
``-shm`` file, which a clean close removes; the database is then opened as immutable, which
takes the folder for a snapshot nobody writes to while it is read. A folder whose
write-ahead log still holds writes (a writer was killed, or is running) cannot be read that
way and raises :class:`~rag.errors.StoreError`.

Search is exact inner product (``IndexFlatIP``) by default; ``index=hnsw`` builds an HNSW
graph (``hnsw_m``, ``ef_construction``, ``ef_search``). HNSW cannot remove points, so
replaced or deleted rows are masked out of searches until the next rebuild (on open, or
once a fifth of the graph is masked).

``index=ivf`` is an inverted file (``IndexIVFFlat``, ``nlist`` lists, ``nprobe`` searched).
Its coarse quantizer needs training data, so the rule is: while the collection holds fewer
than ``39 * nlist`` vectors (FAISS's minimum for k-means) the index is exact (flat), and the
write or rebuild that brings it to ``39 * nlist`` or more trains the quantizer on a sample of
the vectors held then (at most ``100 * nlist``, chosen with a fixed seed) and adds them all;
later writes are assigned to the trained lists, never retraining. A bulk load therefore trains
on what the first batches brought, so load in random order (or load everything in one
upsert). A rebuild from SQLite (on open with a stale snapshot, or after many deletions)
trains again on the data held then. When ``nprobe`` lists yield fewer than ``k`` hits the
search is repeated over every list, so the result size holds.

``calibrate(target)`` chooses the index from a recall target (``rag ingest --recall``),
measured on the collection's own vectors (:mod:`vectorstores.calibration`). Below ``ann_min``
chunks (50,000: where an exact scan of 384-dimensional vectors passes about 7 ms; the
benchmark measured 4.5 ms at 30,000, 13 ms at 100,000 and 135 ms at a million,
eval/results/bench-sweep.jsonl) it keeps the exact flat index, which meets any target. From
there it builds an IVF index with ``nlist`` = 4 * sqrt(N) lists (at most N / 39) and picks
the smallest ``nprobe`` (up to a quarter of the lists) whose recall@10 reaches the target;
IVF rather than HNSW because it built faster in the benchmark (7 s against 15 s for HNSW at
M16 at 100,000 vectors, 88 s against 293 s at a million) and reached higher recall per
millisecond there, and because it removes deleted rows instead of masking them. When no ``nprobe`` in range reaches the target, it keeps the flat
index. Options the user named are kept: with ``index=hnsw`` it picks ``ef_search`` (up to
512), with ``nprobe`` or ``ef_search`` named it only measures.

A batch of queries (``search_many``) takes the lock, evaluates the filter and reads the hits'
chunks from SQLite once for all of them; HNSW searches the whole batch in one FAISS call.
Each row's hits are exactly what ``search`` gives it: against more than about 10,000
vectors, FAISS scores several queries at once with another kernel than one query, whose
sums round differently in the last bit, so a flat index, and an IVF index (whose coarse
quantizer is a flat index over its lists), are searched one row at a time.

Filters are applied before ranking: the matching row ids become a FAISS ``IDSelector``, and
small selections (at most 2,048 rows or 2% of the collection) are ranked exactly, whatever
the index. The matching rows come from in-memory columns of the fields filtered on, read
once per write generation (:mod:`vectorstores.faiss_columns`); SQL over the JSON metadata
answers where the columns can't (integers past 2**53). Both address a field by a quoted JSON
path (``$."Header 1"``) passed as a parameter, so any key the metadata rule allows works.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rag.errors import CollectionNotFoundError, DimensionMismatchError, StoreError
from rag.filters import ALL_OPS, And, Comparison, Filter, Not, Or
from rag.store import (
    Calibration,
    Capabilities,
    OptionValue,
    StoreBase,
    StoreConfig,
    folder_writable,
    read_options,
)
from rag.types import Chunk, Hit
from vectorstores import calibration
from vectorstores.faiss_columns import ColumnCache, json_path

_DEFAULTS: dict[str, str | int] = {
    "index": "flat",
    "hnsw_m": 32,
    "ef_construction": 200,
    "ef_search": 64,
    "nlist": 1024,
    "nprobe": 16,
    # calibrate: the collection size from which a recall target gets an ANN index.
    "ann_min": 50_000,
}
_NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_EF_SEARCHES = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_IVF_MIN_PER_LIST = 39  # FAISS warns below 39 training points per centroid
_IVF_SAMPLE_PER_LIST = 100
_SQL_BATCH = 500  # ids per "IN (...)" (SQLite allows 32,766 variables; keep statements small)


class FaissStore(StoreBase):
    """One collection: a folder under ``config.data_dir`` named after it."""

    name: ClassVar[str] = "faiss"
    capabilities: ClassVar[Capabilities] = Capabilities(
        filter_ops=ALL_OPS, exact_search=True, calibrate=True
    )
    description: ClassVar[str] = (
        "FAISS in process: exact inner product by default, HNSW as an option"
    )

    def __init__(
        self, collection: str, *, dim: int, config: StoreConfig, create: bool = True
    ) -> None:
        self.collection = collection  # checked before it becomes a path
        import faiss

        self._faiss = faiss
        opts = read_options(config.options, _DEFAULTS, backend=self.name)
        if opts["index"] not in ("flat", "hnsw", "ivf"):
            raise StoreError(f"faiss option index={opts['index']!r}: choose flat, hnsw or ivf")
        if int(opts["nlist"]) < 1 or int(opts["nprobe"]) < 1:
            raise StoreError("faiss options nlist and nprobe must be positive integers")
        self._opts = opts
        self._set_capabilities()
        self.path = Path(config.data_dir) / self.collection
        db_file = self.path / "chunks.sqlite"
        #: True when the folder cannot be written: searches work, writes raise StoreError.
        self.read_only = False
        if db_file.exists():
            self.read_only = not (folder_writable(self.path) and os.access(db_file, os.W_OK))
        elif not create:
            raise CollectionNotFoundError(
                f"faiss collection {collection!r} does not exist in {self.path.parent}"
            )
        else:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"faiss collection {collection!r} cannot be created in {self.path.parent}: "
                    f"{e.strerror or e}"
                ) from e
        self._lock = threading.RLock()
        if self.read_only:
            self._db = self._open_read_only(db_file)
        else:
            self._db = sqlite3.connect(db_file, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS chunks (
                    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    text TEXT NOT NULL,
                    metadata TEXT NOT NULL,
                    vector BLOB NOT NULL
                );
                CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                """
            )
        try:
            stored_dim = self._state("dim")
        except sqlite3.DatabaseError as e:  # read-only, and not a collection this store made
            self._db.close()
            raise StoreError(f"faiss collection {collection!r} in {self.path}: {e}") from e
        if stored_dim is None and self.read_only:
            self._db.close()
            raise StoreError(
                f"faiss collection {collection!r} in {self.path} was never written to, and its "
                "folder is read-only"
            )
        if stored_dim is None:
            self._set_state("dim", str(dim))
            self._set_state("generation", "0")
        elif int(stored_dim) != dim:
            self._db.close()
            raise DimensionMismatchError(
                f"faiss collection {collection!r} holds {stored_dim}-dimensional vectors, not {dim}; "
                "use the embedder that built it, or ingest into a new collection"
            )
        self.dim = dim
        self._masked: set[int] = set()
        self._columns = ColumnCache()  # metadata columns for filters
        self._seen = -1
        self._saved_generation = -1
        self._index = self._load_or_build()

    def _set_capabilities(self) -> None:
        exact = self._opts["index"] == "flat"
        self.capabilities = dataclasses.replace(type(self).capabilities, exact_search=exact)

    # --- persistence -----------------------------------------------------------------------

    def _open_read_only(self, db_file: Path) -> sqlite3.Connection:
        """SQLite on a folder this process cannot write: ``mode=ro``, or immutable when the
        WAL's ``-shm`` file is gone and cannot be made (see the module docstring)."""
        uri = f"{db_file.absolute().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
        wal = db_file.with_name(db_file.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(
                f"faiss collection {self.collection!r} in {self.path} is read-only, and its "
                "write-ahead log holds writes not yet merged (a writer was stopped, or is "
                "running); open it once where the folder is writable, then read it here"
            )
        return sqlite3.connect(
            f"{uri}&immutable=1", uri=True, check_same_thread=False, isolation_level=None
        )

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise StoreError(
                f"faiss collection {self.collection!r} in {self.path} is read-only (this "
                f"process cannot write to its folder): {action} is refused; searches work"
            )

    def _state(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_state(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def _generation(self) -> int:
        return int(self._state("generation") or 0)

    def _new_index(self) -> Any:
        faiss = self._faiss
        if self._opts["index"] == "hnsw":
            inner = faiss.IndexHNSWFlat(
                self.dim, int(self._opts["hnsw_m"]), faiss.METRIC_INNER_PRODUCT
            )
            inner.hnsw.efConstruction = int(self._opts["ef_construction"])
            inner.hnsw.efSearch = int(self._opts["ef_search"])
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    def _kind(self) -> str:
        """What the snapshot must have been built as to be reused."""
        if self._opts["index"] == "ivf":
            return f"ivf{int(self._opts['nlist'])}"
        return str(self._opts["index"])

    def _ivf_trained(self) -> bool:
        return isinstance(self._index, self._faiss.IndexIVF)

    def _ivf_threshold(self) -> int:
        return _IVF_MIN_PER_LIST * int(self._opts["nlist"])

    def _train_ivf(self) -> Any:
        """A trained, empty IVF index (call inside the read transaction of a rebuild)."""
        faiss = self._faiss
        nlist = int(self._opts["nlist"])
        total = int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])
        want = min(total, _IVF_SAMPLE_PER_LIST * nlist)
        picked = np.zeros(total, dtype=bool)
        picked[np.random.default_rng(0).choice(total, size=want, replace=False)] = True
        sample = np.empty((want, self.dim), dtype=np.float32)
        filled = position = 0
        cur = self._db.execute("SELECT vector FROM chunks ORDER BY rowid")
        while rows := cur.fetchmany(20000):
            keep = picked[position : position + len(rows)]
            position += len(rows)
            chosen = [r[0] for r, k in zip(rows, keep, strict=True) if k]
            if chosen:
                vecs = np.frombuffer(b"".join(chosen), dtype=np.float32).reshape(-1, self.dim)
                sample[filled : filled + len(vecs)] = vecs
                filled += len(vecs)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True  # centroids on the unit sphere, like the vectors
        index.cp.seed = 1234
        index.train(sample[:filled])
        index.nprobe = int(self._opts["nprobe"])
        # A hash table from id to list position: remove_ids and reconstruct by row id.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index

    def _snapshot_paths(self) -> tuple[Path, Path]:
        return self.path / "index.faiss", self.path / "index.json"

    def _load_or_build(self) -> Any:
        """The index for the current SQLite state; sets ``_seen`` to its generation."""
        index_file, info_file = self._snapshot_paths()
        self._db.execute("BEGIN")  # one consistent read of the generation and the rows
        try:
            gen = self._generation()
            if index_file.exists() and info_file.exists():
                try:
                    info = json.loads(info_file.read_text())
                    if info.get("generation") == gen and info.get("index") == self._kind():
                        index = self._faiss.read_index(str(index_file))
                        self._masked = set(info.get("masked", []))
                        self._seen = self._saved_generation = gen
                        return index
                except (OSError, ValueError, RuntimeError):
                    pass  # an unreadable snapshot is rebuilt from SQLite below
            self._masked = set()
            index = self._new_index()
            if self._opts["index"] == "ivf":
                count = int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])
                if count >= self._ivf_threshold():
                    index = self._train_ivf()
            cur = self._db.execute("SELECT rowid, vector FROM chunks ORDER BY rowid")
            while rows := cur.fetchmany(20000):
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                index.add_with_ids(vecs.reshape(len(rows), self.dim), ids)
            self._seen, self._saved_generation = gen, -1
            return index
        finally:
            self._db.execute("COMMIT")

    def save(self) -> None:
        """Write the in-memory index snapshot (done on close; a missing or stale snapshot
        only costs a rebuild on the next open)."""
        with self._lock:
            gen = self._generation()
            if gen == self._saved_generation or self.read_only:
                return
            index_file, info_file = self._snapshot_paths()
            tmp = index_file.with_suffix(".faiss.tmp")
            self._faiss.write_index(self._index, str(tmp))
            os.replace(tmp, index_file)
            info = {"generation": gen, "index": self._kind(), "masked": sorted(self._masked)}
            tmp_info = info_file.with_suffix(".json.tmp")
            tmp_info.write_text(json.dumps(info))
            os.replace(tmp_info, info_file)
            self._saved_generation = gen

    def _sync(self) -> None:
        # Another process may have written since this one loaded: rebuild to catch up.
        if self._generation() != self._seen:
            self._index = self._load_or_build()

    # --- the contract ----------------------------------------------------------------------

    def _upsert(self, chunks: list[Chunk], vecs: np.ndarray) -> None:
        self._check_writable("upsert")
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                stale = self._generation() != self._seen
                old = self._rowids([c.id for c in chunks])
                if old:
                    db.executemany(
                        "DELETE FROM chunks WHERE rowid = ?", [(r,) for r in old.values()]
                    )
                db.executemany(
                    "INSERT INTO chunks (id, text, metadata, vector) VALUES (?, ?, ?, ?)",
                    [
                        (
                            c.id,
                            c.text,
                            json.dumps(c.metadata, ensure_ascii=False),
                            vecs[i].tobytes(),
                        )
                        for i, c in enumerate(chunks)
                    ],
                )
                new = self._rowids([c.id for c in chunks])
                gen = self._bump(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if stale:
                self._index = self._load_or_build()
                return
            self._forget(list(old.values()))
            self._index.add_with_ids(vecs, np.array([new[c.id] for c in chunks], dtype=np.int64))
            self._seen = gen
            if (
                self._opts["index"] == "ivf"
                and not self._ivf_trained()
                and self._index.ntotal >= self._ivf_threshold()
            ):
                self._index = self._load_or_build()  # trains the IVF index: see the docstring
            self._maybe_rebuild()

    def _bump(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE state SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        return self._generation()

    def _forget(self, rowids: list[int]) -> None:
        if not rowids:
            return
        if self._opts["index"] == "hnsw":
            self._masked.update(rowids)
        elif self._ivf_trained():
            # The IVF hash table removes only through an IDSelectorArray.
            arr = np.array(rowids, dtype=np.int64)
            self._index.remove_ids(self._faiss.IDSelectorArray(arr.size, self._faiss.swig_ptr(arr)))
        else:
            self._index.remove_ids(np.array(rowids, dtype=np.int64))

    def _maybe_rebuild(self) -> None:
        if self._masked and len(self._masked) > 0.2 * max(1, self._index.ntotal):
            self._index = self._load_or_build()

    def _rowids(self, ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for start in range(0, len(ids), _SQL_BATCH):
            part = list(ids[start : start + _SQL_BATCH])
            marks = ",".join("?" * len(part))
            out.update(
                self._db.execute(
                    f"SELECT id, rowid FROM chunks WHERE id IN ({marks})", part
                ).fetchall()
            )
        return out

    def _delete(self, ids: list[str]) -> None:
        self._check_writable("delete")
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                stale = self._generation() != self._seen
                found = self._rowids(ids)
                db.executemany("DELETE FROM chunks WHERE rowid = ?", [(r,) for r in found.values()])
                gen = self._bump(db) if found else self._seen
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if stale:
                self._index = self._load_or_build()
                return
            self._forget(list(found.values()))
            self._seen = gen
            self._maybe_rebuild()

    def _search(self, vector: np.ndarray, k: int, where: Filter | None) -> list[Hit]:
        return self._search_many(vector.reshape(1, -1), k, where)[0]

    def _search_many(self, vectors: np.ndarray, k: int, where: Filter | None) -> list[list[Hit]]:
        # One lock, one filter evaluation and one SQL read for every row; the FAISS calls
        # are batched where that leaves each row's result as a search of its own would give.
        n = len(vectors)
        with self._lock:
            self._sync()
            allowed: np.ndarray | None = None
            if where is not None:
                allowed = self._matching_rows(where)
                if self._masked:
                    allowed = allowed[~np.isin(allowed, list(self._masked))]
                if allowed.size == 0:
                    return [[] for _ in range(n)]
            live = self._index.ntotal - len(self._masked)
            if live <= 0:
                return [[] for _ in range(n)]
            kk = min(k, live if allowed is None else int(allowed.size))
            if allowed is not None and allowed.size <= max(2048, live // 50):
                # HNSW walks badly through a graph where few nodes qualify, few IVF lists
                # hold enough of them, and a flat scan reads every vector to rank a few:
                # rank a small selection exactly instead.
                scores, ids = self._exact_subset(vectors, allowed, kk)
            else:
                scores, ids = self._index_search(vectors, kk, allowed)
            rows = [
                [(int(r), float(s)) for r, s in zip(i_row, s_row, strict=True) if r >= 0]
                for i_row, s_row in zip(ids, scores, strict=True)
            ]
            chunks = self._by_rowid(sorted({r for row in rows for r, _ in row}))
        return [[Hit(chunks[r].id, s, chunks[r]) for r, s in row if r in chunks] for row in rows]

    def _index_search(
        self, q: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The index's ``(scores, rowids)`` for each row of ``q``, over ``allowed`` rows (or
        every row not masked)."""
        faiss = self._faiss
        hnsw = self._opts["index"] == "hnsw"
        ivf = self._ivf_trained()
        sel = None
        if allowed is not None:
            sel = faiss.IDSelectorBatch(allowed)
        elif self._masked:
            sel = faiss.IDSelectorNot(
                faiss.IDSelectorBatch(np.array(sorted(self._masked), dtype=np.int64))
            )

        def params(nprobe: int | None = None) -> Any:
            if hnsw:
                out = faiss.SearchParametersHNSW(efSearch=max(int(self._opts["ef_search"]), k))
            elif ivf:
                out = faiss.SearchParametersIVF(nprobe=nprobe or int(self._opts["nprobe"]))
            elif sel is not None:
                out = faiss.SearchParameters()
            else:
                return None
            if sel is not None:
                out.sel = sel
            return out

        # HNSW searches each query on its own, whatever the batch. A flat scan of several
        # queries (IVF's coarse quantizer is one) takes another kernel than one query's,
        # whose scores differ in the last bit: one row at a time (see the docstring).
        step = len(q) if hnsw else 1
        scores, ids = [], []
        for start in range(0, len(q), step):
            part = q[start : start + step]
            d, i = self._index.search(part, k, params=params())
            short = (i < 0).any(axis=1) if ivf else None
            if short is not None and short.any():
                # The probed lists held fewer than k matches: search every list.
                d[short], i[short] = self._index.search(
                    part[short], k, params=params(self._index.nlist)
                )
            scores.append(d)
            ids.append(i)
        return np.vstack(scores), np.vstack(ids)

    def _matching_rows(self, where: Filter) -> np.ndarray:
        """Rowids matching ``where``: from the column cache, or from SQL where it can't say."""
        db = self._db
        db.execute("BEGIN")  # the generation and the columns from one snapshot
        try:
            allowed = self._columns.rows(db, self._generation(), where)
            if allowed is None:
                sql, params = to_sql(where)
                rows = db.execute(f"SELECT rowid FROM chunks WHERE {sql}", params).fetchall()
                allowed = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        finally:
            db.execute("COMMIT")
        return allowed

    def _exact_subset(
        self, q: np.ndarray, allowed: np.ndarray, k: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        vecs = self._index.reconstruct_batch(allowed)
        out_scores, out_ids = [], []
        for row in q:  # one product per query: a matrix product would round differently
            scores = vecs @ row
            top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
            order = top[np.argsort(-scores[top], kind="stable")]
            out_scores.append(scores[order])
            out_ids.append(allowed[order])
        return out_scores, out_ids

    def _by_rowid(self, rowids: list[int]) -> dict[int, Chunk]:
        out: dict[int, Chunk] = {}
        for start in range(0, len(rowids), _SQL_BATCH):
            part = rowids[start : start + _SQL_BATCH]
            marks = ",".join("?" * len(part))
            for rowid, cid, text, meta in self._db.execute(
                f"SELECT rowid, id, text, metadata FROM chunks WHERE rowid IN ({marks})", part
            ):
                out[rowid] = Chunk(cid, text, json.loads(meta))
        return out

    def _get(self, ids: list[str]) -> list[Chunk]:
        found: dict[str, Chunk] = {}
        with self._lock:
            for start in range(0, len(ids), _SQL_BATCH):
                part = ids[start : start + _SQL_BATCH]
                marks = ",".join("?" * len(part))
                for cid, text, meta in self._db.execute(
                    f"SELECT id, text, metadata FROM chunks WHERE id IN ({marks})", part
                ):
                    found[cid] = Chunk(cid, text, json.loads(meta))
        return [found[i] for i in ids if i in found]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def _scan(self, batch_size: int) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT rowid, id, text, metadata, vector FROM chunks WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, batch_size),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            chunks = [Chunk(r[1], r[2], json.loads(r[3])) for r in rows]
            vecs = np.frombuffer(b"".join(r[4] for r in rows), dtype=np.float32).reshape(
                len(rows), self.dim
            )
            yield chunks, vecs.copy()

    # --- calibration (see the module docstring) ---------------------------------------------

    def calibrate(
        self, target: float, *, fixed: Mapping[str, OptionValue] | None = None
    ) -> Calibration:
        started = time.perf_counter()
        fixed = dict(fixed or {})
        with self._lock:
            self._sync()
            count = self._index.ntotal - len(self._masked)
            ann_min = int(self._opts["ann_min"])
            chosen: dict[str, OptionValue] = {}
            if "index" not in fixed:
                ann = target < 1.0 and count >= ann_min
                chosen["index"] = "ivf" if ann else "flat"
                if ann and "nlist" not in fixed:
                    chosen["nlist"] = max(1, min(round(4 * math.sqrt(count)), count // 39))
            # The named options are those the store was opened with; applied again here for
            # a caller that names them only now.
            named = read_options(fixed, _DEFAULTS, backend=self.name)
            self._switch({**chosen, **{key: named[key] for key in fixed}})
            index = self._opts["index"]
            param = {"hnsw": "ef_search", "ivf": "nprobe"}.get(str(index))

            record = calibration.recorder(target, count=count, fixed=fixed, started=started)

            def result(recall: float, queries: int, note: str) -> Calibration:
                return record(chosen, recall, queries, note)

            if param is None:
                if "index" in fixed:
                    return result(1.0, 0, "index=flat named: exact")
                reason = "a target of 1" if target >= 1.0 else f"below {ann_min} chunks"
                return result(1.0, 0, f"{reason}: exact")
            if index == "ivf" and not self._ivf_trained():
                return result(1.0, 0, f"ivf is exact until {self._ivf_threshold()} chunks")
            if count < 2:
                return result(1.0, 0, "too few chunks to measure")
            if param in fixed:
                values: list[int] = [int(self._opts[param])]
            elif param == "nprobe":
                most = max(1, int(self._opts["nlist"]) // 4)
                values = [v for v in _NPROBES if v <= most] or [most]
            else:
                values = list(_EF_SEARCHES)
            queries, measure = self._recall_meter(count, param)
            value, got, reached = calibration.smallest_reaching(values, measure, target)
            if not reached and not ({"index", param} & set(fixed)):
                # No setting in range reaches it: the exact index does, and costs less than an
                # IVF search of most lists.
                chosen = {"index": "flat"}
                self._switch(chosen)
                return result(1.0, queries, f"{index} reached {got:.3f} at {param} {value}: exact")
            self._opts[param] = value
            if param not in fixed:
                chosen[param] = value
            if param in fixed:
                note = f"{param}={value} named: measured"
            elif reached:
                note = f"{index}: the smallest {param} that reaches the target"
            else:
                note = f"target not reached: {got:.3f} at {param} {value}"
            return result(got, queries, note)

    def _switch(self, options: Mapping[str, OptionValue]) -> None:
        """Use ``options`` from now on, rebuilding the index if its kind changes."""
        before = self._kind()
        self._opts.update(options)
        self._set_capabilities()
        if self._kind() != before:
            self._index = self._load_or_build()

    def _recall_meter(self, count: int, param: str) -> tuple[int, Any]:
        """The sample size, and a function from a value of ``param`` to the recall@10 the
        index gives at it, on a sample of the collection's own vectors."""
        k = min(calibration.K, count - 1)
        rowids = np.fromiter(
            (r[0] for r in self._db.execute("SELECT rowid FROM chunks")), dtype=np.int64
        )
        qids = calibration.sample(rowids, calibration.sample_size(len(rowids), self.dim))
        queries = np.ascontiguousarray(self._index.reconstruct_batch(qids), dtype=np.float32)

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            self._db.execute("BEGIN")
            try:
                cur = self._db.execute("SELECT rowid, vector FROM chunks ORDER BY rowid")
                while rows := cur.fetchmany(20000):
                    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
                    yield ids, vecs.reshape(len(rows), self.dim)
            finally:
                self._db.execute("COMMIT")

        truth = calibration.exact_neighbours(queries, qids, batches(), k)

        def measure(value: int) -> calibration.Recall:
            self._opts[param] = value
            _, found = self._index_search(queries, k + 1, None)
            return calibration.recall(found, qids, truth)

        return len(qids), measure

    def drop(self) -> None:
        self._check_writable("drop")
        with self._lock:
            self._db.close()
            shutil.rmtree(self.path, ignore_errors=True)
            self._index = None

    def close(self) -> None:
        with self._lock:
            if self._index is None:
                return
            try:
                self.save()
            finally:
                self._db.close()
                self._index = None


# --- filter translation: the portable language to SQLite over JSON metadata ------------------


def to_sql(flt: Filter) -> tuple[str, list[Any]]:
    """A WHERE clause over ``chunks.metadata`` with the reference semantics: every
    comparison on a missing field is false, booleans only equal booleans."""
    if isinstance(flt, And | Or):
        return _balanced(
            " AND " if isinstance(flt, And) else " OR ", [to_sql(f) for f in flt.items]
        )
    if isinstance(flt, Not):
        sql, params = to_sql(flt.item)
        return f"(NOT {sql})", params
    return _comparison(flt)


def _balanced(joiner: str, parts: list[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    """``a AND b AND c ...`` as a balanced tree: SQLite parses a chain into a tree as deep
    as the chain is long, and refuses one past 1,000 levels."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    left, right = _balanced(joiner, parts[:mid]), _balanced(joiner, parts[mid:])
    return f"({left[0]}{joiner}{right[0]})", left[1] + right[1]


def _comparison(c: Comparison) -> tuple[str, list[Any]]:
    # The JSON path travels as a parameter, once per use: json_path() quotes the key.
    path = json_path(c.field)
    jtype = "json_type(metadata, ?)"
    value = "json_extract(metadata, ?)"
    if c.op in _RANGE_SQL:
        return (
            f"COALESCE(({jtype} IN ('integer', 'real') AND {value} {_RANGE_SQL[c.op]} ?), 0)",
            [path, path, c.value],
        )
    operands = c.value if isinstance(c.value, tuple) else (c.value,)
    bools = list(dict.fromkeys("true" if v else "false" for v in operands if isinstance(v, bool)))
    numbers = [v for v in operands if isinstance(v, int | float) and not isinstance(v, bool)]
    strings = [v for v in operands if isinstance(v, str)]
    terms: list[str] = []
    params: list[Any] = []
    if bools:
        terms.append(f"{jtype} IN ({_marks(bools)})")
        params += [path, *bools]
    if numbers:  # SQLite compares integers and reals by value, as the reference does
        terms.append(f"({jtype} IN ('integer', 'real') AND {value} IN ({_marks(numbers)}))")
        params += [path, path, *numbers]
    if strings:
        terms.append(f"({jtype} = 'text' AND {value} IN ({_marks(strings)}))")
        params += [path, path, *strings]
    match = "(" + (" OR ".join(terms) or "0") + ")"
    if c.op in ("$eq", "$in"):
        return f"COALESCE({match}, 0)", params
    return (
        f"({jtype} IS NOT NULL AND {jtype} != 'null' AND NOT COALESCE({match}, 0))",
        [path, path, *params],
    )


_RANGE_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))
