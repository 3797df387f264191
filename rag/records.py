"""What each source contributed to a collection, kept consistent with the store.

A record is written *before* a source's chunks reach the store (the ids about to be written
are recorded as pending) and committed after they are all there and the stale ones are gone.
So after a crash at any moment, every chunk the store might hold is named by some record,
and the next ingest can finish or undo the interrupted work: no duplicates, no orphans.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rag.errors import StoreError
from rag.store import folder_writable


@dataclass(slots=True)
class SourceRecord:
    source: str
    content_hash: str
    size: int
    mtime: float
    #: Chunk ids of the last committed ingest of this source.
    chunk_ids: list[str] = field(default_factory=list)
    #: Ids that may have reached the store in an ingest that did not commit.
    pending_ids: list[str] = field(default_factory=list)
    updated: float = 0.0

    @property
    def committed(self) -> bool:
        return not self.pending_ids

    def all_ids(self) -> set[str]:
        return set(self.chunk_ids) | set(self.pending_ids)


def connect(path: Path, *, synchronous: str) -> tuple[sqlite3.Connection, bool]:
    """``(connection, read_only)``: a WAL-mode connection to ``path``, or where its folder
    cannot be written, a read-only one (``immutable``: on a read-only volume nothing can
    change it, and SQLite needs no lock or shared-memory file)."""
    if folder_writable(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        return db, False
    if not path.exists():
        raise StoreError(f"{path} does not exist, and its read-only folder cannot hold it")
    uri = f"{path.absolute().as_uri()}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None), True


class RecordStore:
    """SQLite file of :class:`SourceRecord` rows, one per source, plus key/value info.

    On a read-only data directory it opens read-only: queries work, writes raise."""

    def __init__(self, path: Path) -> None:
        self._db, self.read_only = connect(path, synchronous="FULL")
        if self.read_only:
            return
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS sources (
                source TEXT PRIMARY KEY,
                content_hash TEXT NOT NULL,
                size INTEGER NOT NULL,
                mtime REAL NOT NULL,
                chunk_ids TEXT NOT NULL,
                pending_ids TEXT NOT NULL,
                updated REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT OR IGNORE INTO info VALUES ('version', 0);
            """
        )

    def close(self) -> None:
        self._db.close()

    def _row(self, row: tuple) -> SourceRecord:
        return SourceRecord(
            row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]), row[6]
        )

    def get(self, source: str) -> SourceRecord | None:
        row = self._db.execute("SELECT * FROM sources WHERE source = ?", (source,)).fetchone()
        return None if row is None else self._row(row)

    def all(self) -> Iterator[SourceRecord]:
        for row in self._db.execute("SELECT * FROM sources ORDER BY source").fetchall():
            yield self._row(row)

    def sources(self) -> dict[str, SourceRecord]:
        return {r.source: r for r in self.all()}

    def count(self) -> tuple[int, int]:
        """``(sources, committed chunk ids)``."""
        n = 0
        chunks = 0
        for (ids,) in self._db.execute("SELECT chunk_ids FROM sources"):
            n += 1
            chunks += len(json.loads(ids))
        return n, chunks

    def version(self) -> int:
        """A counter bumped by every change to the committed state (for derived indexes)."""
        return int(self._db.execute("SELECT value FROM info WHERE key = 'version'").fetchone()[0])

    def _bump(self) -> None:
        self._db.execute("UPDATE info SET value = value + 1 WHERE key = 'version'")

    def mark_pending(self, records: Sequence[SourceRecord]) -> None:
        """Record, in one transaction, the ids that are about to be written for each source
        (keeping what was committed before)."""
        now = time.time()
        with self._transaction():
            for r in records:
                old = self.get(r.source)
                committed = old.chunk_ids if old else []
                pending = sorted(set(r.pending_ids) | set(old.pending_ids if old else []))
                self._db.execute(
                    "INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.source,
                        old.content_hash if old else "",
                        old.size if old else 0,
                        old.mtime if old else 0.0,
                        json.dumps(committed),
                        json.dumps(pending),
                        now,
                    ),
                )

    def commit(self, records: Iterable[SourceRecord]) -> None:
        """The sources' chunks are all in the store and the stale ones are gone."""
        now = time.time()
        with self._transaction():
            for r in records:
                self._db.execute(
                    "INSERT OR REPLACE INTO sources VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (r.source, r.content_hash, r.size, r.mtime, json.dumps(r.chunk_ids), "[]", now),
                )
            self._bump()

    def touch(self, source: str, *, size: int, mtime: float) -> None:
        """Same content, new file times: remember them so the next run skips reading."""
        self._db.execute(
            "UPDATE sources SET size = ?, mtime = ? WHERE source = ?", (size, mtime, source)
        )

    def remove(self, sources: Iterable[str]) -> None:
        with self._transaction():
            self._db.executemany("DELETE FROM sources WHERE source = ?", [(s,) for s in sources])
            self._bump()

    def clear(self) -> None:
        """Forget every source (the store was emptied)."""
        with self._transaction():
            self._db.execute("DELETE FROM sources")
            self._bump()

    def copy_from(self, other: RecordStore) -> None:
        """Replace this record with another's (after a migration)."""
        with self._transaction():
            self._db.execute("DELETE FROM sources")
            rows = other._db.execute("SELECT * FROM sources").fetchall()
            self._db.executemany("INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._bump()

    def _transaction(self) -> _Txn:
        return _Txn(self._db)


class _Txn:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class EmbeddingCache:
    """Vectors keyed by (model, text hash): re-chunking, re-ingesting into another
    collection or migrating does not embed the same text twice."""

    def __init__(self, path: Path, model_key: str, dim: int) -> None:
        self.model_key = model_key
        self.dim = dim
        if path.exists() or folder_writable(path.parent):
            self._db, self.read_only = connect(path, synchronous="NORMAL")
        else:  # a read-only data directory without a cache: every lookup misses
            self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self.read_only = True
        if not (self.read_only and path.exists()):
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT NOT NULL, hash BLOB NOT NULL, "
                "vector BLOB NOT NULL, PRIMARY KEY (model, hash)) WITHOUT ROWID"
            )

    def lookup(self, hashes: Sequence[bytes]) -> dict[bytes, bytes]:
        """Stored vectors (raw float32 bytes) for the hashes that have one."""
        out: dict[bytes, bytes] = {}
        for start in range(0, len(hashes), 500):
            part = list(hashes[start : start + 500])
            marks = ",".join("?" * len(part))
            out.update(
                self._db.execute(
                    f"SELECT hash, vector FROM vectors WHERE model = ? AND hash IN ({marks})",
                    [self.model_key, *part],
                ).fetchall()
            )
        return out

    def store(self, hashes: Sequence[bytes], vectors: bytes | Sequence[bytes]) -> None:
        """Keep vectors for later (not on a read-only data directory, where it does nothing)."""
        if self.read_only:
            return
        rows = [(self.model_key, h, v) for h, v in zip(hashes, vectors, strict=True)]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")

    def embed(
        self, texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]
    ) -> CachedVectors:
        """Vectors for ``texts``: stored ones from the cache, the rest from ``embed`` (each
        distinct text once), which are then stored."""
        hashes = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
        found = self.lookup(hashes)
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for i, h in enumerate(hashes):
            if h in found:
                vectors[i] = np.frombuffer(found[h], dtype=np.float32)
            else:
                missing.setdefault(h, []).append(i)
        seconds = 0.0
        if missing:
            t0 = time.perf_counter()
            fresh = np.asarray(embed([texts[rows[0]] for rows in missing.values()]))
            seconds = time.perf_counter() - t0
            for j, rows in enumerate(missing.values()):
                vectors[rows] = fresh[j]
            self.store(list(missing), [row.tobytes() for row in fresh])
        cached = len(texts) - sum(len(rows) for rows in missing.values())
        return CachedVectors(vectors, embedded=len(missing), cached=cached, seconds=seconds)

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True, slots=True)
class CachedVectors:
    """What :meth:`EmbeddingCache.embed` returns: the vectors, how many texts the model
    embedded, how many came from the cache, and the seconds the model took."""

    vectors: np.ndarray
    embedded: int
    cached: int
    seconds: float
