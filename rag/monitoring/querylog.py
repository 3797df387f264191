"""A collection's query log: one SQLite file beside the collection, written off the hot path.

``<data dir>/collections/<store>/<name>/monitor.sqlite`` holds:

* ``events``: one row per search or answer (:class:`QueryEvent`): the time, the stage
  latencies, the hit count, the top score and the spread of the scores, the mode, the
  generator, the citation count, the error class; the query's nearest centroid under the
  corpus reference in force (:mod:`rag.monitoring.drift`), computed by the writer; and the
  query's text and vector only where the collection's owner allows it (``log_queries``).
* ``meta``: the logging policy, the current reference's id, the count of dropped events.
* ``reference``: corpus references (centroids, low-score threshold) and query references.
* ``drift``: the corpus drift measured at each ingest.

:meth:`QueryLog.record` never blocks: it puts the event on a bounded queue (1,000 events)
that one background thread drains in batches, each batch one transaction; when the queue is
full the event is dropped and counted (``dropped``, also kept in ``meta``). The log is
bounded by age (30 days) and size (100,000 events): the writer deletes older and surplus
rows as it goes. Keys and secrets are never part of an event.

What a query leaves behind (``log_queries``): ``none`` keeps no trace of the question
beyond the numbers above and its nearest centroid (one of ten topic numbers, from which the
question cannot be read back); ``vector`` also keeps its embedding (float16), so that a new
baseline can re-assign past queries; ``text`` keeps the embedding and the text, so that the
out-of-coverage questions can be read. ``off`` logs nothing at all. The default is
``none``: a question can be personal data, and so can its embedding (embeddings can be
inverted to much of their text; Morris et al., "Text Embeddings Reveal (Almost) As Much As
Text", 2023), while drift needs neither.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.monitoring.events import DEFAULT_POLICY, STAGES, QueryEvent, check_policy

if TYPE_CHECKING:
    from rag.monitoring.drift import CorpusReference

logger = logging.getLogger("rag")

QUEUE_SIZE = 1000
MAX_AGE_DAYS = 30.0
MAX_ROWS = 100_000
FILE_NAME = "monitor.sqlite"


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, op TEXT, mode TEXT, k INTEGER, hits INTEGER,
    top_score REAL, spread REAL, score_kind TEXT, generator TEXT, citations INTEGER,
    grounding TEXT, error TEXT, {", ".join(f"{s} REAL" for s in STAGES)},
    ref_id TEXT, centroid INTEGER, query TEXT, vector BLOB
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS reference (
    id TEXT PRIMARY KEY, kind TEXT, created REAL, data TEXT, blob BLOB
);
CREATE TABLE IF NOT EXISTS drift (ts REAL, kind TEXT, psi REAL, data TEXT);
"""
_COLUMNS = (
    "ts op mode k hits top_score spread score_kind generator citations grounding error".split()
    + list(STAGES)
    + ["ref_id", "centroid", "query", "vector"]
)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to a query log file (created with its tables unless ``readonly``)."""
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
    return db


class QueryLog:
    """The query log of one collection (see the module docstring). Get one with
    :func:`open_query_log`: one instance, and one writer thread, per file and process."""

    def __init__(
        self,
        path: Path,
        *,
        max_age_days: float = MAX_AGE_DAYS,
        max_rows: int = MAX_ROWS,
        queue_size: int = QUEUE_SIZE,
        prune_every: int = 500,
    ) -> None:
        self.path = Path(path)
        self.prune_every = prune_every
        self.max_age_days = max_age_days
        self.max_rows = max_rows
        self.dropped = 0
        self._queue: queue.Queue[QueryEvent | None] = queue.Queue(maxsize=queue_size)
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._policy: str | None = None
        self._unsaved_drops = 0
        self._since_prune = 0
        self._failed = False

    # --- the policy ----------------------------------------------------------------------

    @property
    def policy(self) -> str:
        """What a logged query keeps (:data:`POLICIES`): the one saved with the collection,
        else :data:`DEFAULT_POLICY`."""
        if self._policy is None:
            self._policy = self.meta("log_queries") or DEFAULT_POLICY
        return self._policy

    def set_policy(self, policy: str) -> None:
        """Save ``policy`` with the collection; it applies to the events recorded from now."""
        check_policy(policy)
        with contextlib.closing(connect(self.path)) as db, db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('log_queries', ?)", (policy,))
        self._policy = policy

    # --- writing -------------------------------------------------------------------------

    def record(self, event: QueryEvent) -> bool:
        """Queue ``event`` for the writer and return at once: ``False`` when it was not
        queued (the policy is ``off``, or the queue is full: then it is counted in
        ``dropped``)."""
        if self._failed or self.policy == "off":
            return False
        self._start()
        with self._cond:
            self._pending += 1
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._cond:
                self._pending -= 1
                self.dropped += 1
                self._unsaved_drops += 1
                self._cond.notify_all()
            return False
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written (at most ``timeout`` seconds);
        ``True`` when none is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"querylog:{self.path.parent.name}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        ref: CorpusReference | None = None
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events = [e for e in batch if e is not None]
            try:
                if db is None:
                    db = connect(self.path)
                ref = self._current_reference(db, ref)
                self._write(db, events, ref)
            except (sqlite3.Error, OSError) as e:
                # A full disk or a read-only folder must not stop the searches: the events
                # are counted as dropped and the log says why, once.
                if not self._failed:
                    logger.warning(
                        "query log %s cannot be written (%s); logging stops", self.path, e
                    )
                self._failed = True
                with self._cond:
                    self.dropped += len(events)
            finally:
                with self._cond:
                    self._pending -= len(events)
                    self._cond.notify_all()
            if any(e is None for e in batch):
                if db is not None:
                    db.close()
                return

    def _current_reference(
        self, db: sqlite3.Connection, cached: CorpusReference | None
    ) -> CorpusReference | None:
        # The owner may change the policy or the reference from another process.
        policy = db.execute("SELECT value FROM meta WHERE key = 'log_queries'").fetchone()
        if policy is not None:
            self._policy = str(policy[0])
        row = db.execute("SELECT value FROM meta WHERE key = 'reference'").fetchone()
        if row is None:
            return None
        if cached is not None and cached.id == row[0]:
            return cached
        return _load_reference(db, row[0])

    def _write(
        self, db: sqlite3.Connection, events: list[QueryEvent], ref: CorpusReference | None
    ) -> None:
        policy = self.policy
        rows = []
        for e in events:
            centroid = None
            if ref is not None and e.vector is not None and e.error == "":
                with contextlib.suppress(ValueError):  # another dimension: no centroid
                    centroid = int(ref.assign(e.vector)[0])
            keep_vector = policy in ("vector", "text") and e.vector is not None
            rows.append(
                (
                    e.ts, e.op, e.mode, e.k, e.hits, e.top_score, e.spread, e.score_kind,
                    e.generator, e.citations, e.grounding, e.error,
                    *(e.stages.get(s) for s in STAGES),
                    ref.id if ref is not None and centroid is not None else None,
                    centroid,
                    e.query if policy == "text" and e.query else None,
                    np.asarray(e.vector, dtype=np.float16).tobytes() if keep_vector else None,
                )
            )  # fmt: skip
        with db:
            db.executemany(
                f"INSERT INTO events ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                rows,
            )
            with self._cond:
                drops, self._unsaved_drops = self._unsaved_drops, 0
            if drops:
                db.execute(
                    "INSERT INTO meta VALUES ('dropped', ?) ON CONFLICT(key) DO UPDATE "
                    "SET value = CAST(value AS INTEGER) + excluded.value",
                    (drops,),
                )
            if self._since_prune == 0 or self._since_prune >= self.prune_every:
                self._prune(db)
                self._since_prune = 0
            self._since_prune += len(rows)

    def _prune(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM events WHERE ts < ?", (time.time() - self.max_age_days * 86400,))
        (n,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
        if n > self.max_rows:
            db.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY ts, id LIMIT ?)",
                (n - self.max_rows,),
            )

    def prune(self) -> None:
        """Delete the events over the age and size limits now (the writer does it every
        ``prune_every`` events)."""
        self.flush()
        with contextlib.closing(connect(self.path)) as db, db:
            self._prune(db)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer."""
        self.flush(timeout)
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=1.0)
            self._thread.join(timeout)
            self._thread = None

    # --- reading -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.exists():
            yield None
            return
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=10)
        except sqlite3.OperationalError:  # a read-only data directory
            db = connect(self.path, readonly=True)
        with contextlib.closing(db):
            yield db

    def meta(self, key: str) -> str | None:
        try:
            with self._read() as db:
                if db is None:
                    return None
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else str(row[0])

    def events(
        self, *, since: float | None = None, last: int | None = None, wait: bool = True
    ) -> list[dict[str, Any]]:
        """Logged events, oldest first, as dicts of the columns (``vector`` as float32, or
        ``None``): those from ``since`` (a time), and of those the ``last`` N. Waits for
        this process's queued events to be written first unless ``wait`` is false."""
        if wait:
            self.flush()
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM events"
        args: list[Any] = []
        if since is not None:
            sql += " WHERE ts >= ?"
            args.append(since)
        sql += " ORDER BY ts DESC, id DESC"
        if last is not None:
            sql += " LIMIT ?"
            args.append(int(last))
        return self._rows(sql, args)[::-1]

    def first_events(self, since: float, n: int) -> list[dict[str, Any]]:
        """The first ``n`` events logged from the time ``since``, oldest first."""
        self.flush()
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM events WHERE ts >= ? ORDER BY ts, id LIMIT ?"
        return self._rows(sql, [since, int(n)])

    def _rows(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        with self._read() as db:
            rows = [] if db is None else db.execute(sql, args).fetchall()
        names = ["id", *_COLUMNS]
        out = []
        for row in rows:
            d = dict(zip(names, row, strict=True))
            if d["vector"] is not None:
                d["vector"] = np.frombuffer(d["vector"], dtype=np.float16).astype(np.float32)
            out.append(d)
        return out

    def count(self) -> int:
        with self._read() as db:
            return 0 if db is None else int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # --- references and drift ------------------------------------------------------------

    def reference(self) -> CorpusReference | None:
        """The corpus reference in force, or ``None``."""
        with self._read() as db:
            if db is None:
                return None
            row = db.execute("SELECT value FROM meta WHERE key = 'reference'").fetchone()
            return None if row is None else _load_reference(db, row[0])

    def save_reference(self, ref: CorpusReference) -> None:
        """Make ``ref`` the corpus reference; the query reference taken under the previous
        one, if any, is dropped with it."""
        with contextlib.closing(connect(self.path)) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO reference VALUES (?, 'corpus', ?, ?, ?)",
                (ref.id, ref.created, json.dumps(ref.to_json()), ref.centroids.tobytes()),
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('reference', ?)", (ref.id,))
            db.execute("DELETE FROM meta WHERE key = 'query_reference'")

    def query_reference(self) -> dict[str, Any] | None:
        """The query reference saved by a baseline (:mod:`rag.monitoring.report`), or ``None``."""
        raw = self.meta("query_reference")
        return None if raw is None else json.loads(raw)

    def save_query_reference(self, data: dict[str, Any] | None) -> None:
        with contextlib.closing(connect(self.path)) as db, db:
            if data is None:
                db.execute("DELETE FROM meta WHERE key = 'query_reference'")
            else:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('query_reference', ?)", (json.dumps(data),)
                )

    def add_drift(self, kind: str, value: float, data: dict[str, Any]) -> None:
        """Record a drift measurement (``kind`` "corpus": at an ingest)."""
        with contextlib.closing(connect(self.path)) as db, db:
            db.execute(
                "INSERT INTO drift VALUES (?, ?, ?, ?)",
                (time.time(), kind, value, json.dumps(data)),
            )

    def drift_history(self, kind: str = "corpus") -> list[dict[str, Any]]:
        with self._read() as db:
            rows = (
                []
                if db is None
                else db.execute(
                    "SELECT ts, psi, data FROM drift WHERE kind = ? ORDER BY ts", (kind,)
                ).fetchall()
            )
        return [{"ts": ts, "psi": p, **json.loads(d)} for ts, p, d in rows]


def _load_reference(db: sqlite3.Connection, ref_id: str) -> CorpusReference | None:
    from rag.monitoring.drift import CorpusReference

    row = db.execute("SELECT data, blob FROM reference WHERE id = ?", (ref_id,)).fetchone()
    return None if row is None else CorpusReference.from_json(json.loads(row[0]), row[1])


_LOGS: dict[str, QueryLog] = {}
_LOGS_LOCK = threading.Lock()


def open_query_log(path: Path, *, policy: str | None = None) -> QueryLog:
    """The query log in the file ``path``, one per file in a process (and one writer
    thread). ``policy``, when given, is saved as the collection's (:meth:`QueryLog.set_policy`)."""
    key = os.path.abspath(path)
    with _LOGS_LOCK:
        log = _LOGS.get(key)
        if log is None:
            log = _LOGS[key] = QueryLog(Path(key))
    if policy is not None and policy != log.policy:
        log.set_policy(policy)
    return log


@atexit.register
def _flush_all() -> None:
    for log in list(_LOGS.values()):
        log.flush(timeout=5.0)
