"""PostgreSQL + pgvector: the embedded server by default, or yours.

Where the data lives
    With ``config.url`` (``--store-url`` or ``RAG_PG_DSN``: a libpq DSN or a
    ``postgresql://`` URI) the store uses that server. Otherwise it starts, or attaches to,
    the embedded PostgreSQL 18 + pgvector 0.8 of :mod:`vectorstores.pgserver` in
    ``config.data_dir`` and releases it in ``close()``. Each collection is one table
    ``ragkit.c_<name>_<hash>`` (``id`` text primary key, ``text``, ``metadata`` jsonb,
    ``embedding`` vector(dim), or halfvec(dim) past 2,000 dimensions) recorded in the
    catalog ``ragkit.collections`` with its dimension, vector type and index settings.

Writes
    Each upsert or delete is one transaction: an upsert COPYs (binary) into a temporary
    table, then ``INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE``, skipping rows that did
    not change (an unchanged re-upsert adds no dead tuples to the HNSW graph). A process
    killed at any moment leaves every call either done or not done.

Index policy
    An HNSW graph built row by row during a bulk load costs several times a build over the
    loaded table, so a collection has no index until it holds ``index_min_rows`` rows
    (10,000; below that an exact scan is exact and takes tens of milliseconds). Then the
    first search, :meth:`PgvectorStore.flush` or :meth:`PgvectorStore.build_index`, or
    ``close()`` after writes builds the ANN index and a GIN index on ``metadata``; later
    upserts go into both incrementally. The ANN index is the option ``index``: with
    ``auto`` (the default) the build chooses by the rows it indexes, HNSW below
    ``auto_ivfflat_rows`` (500,000), IVFFlat from there. On synthetic 384-d vectors the
    default HNSW graph (m 16, ef_construction 64) reached recall@10 0.95 at 100k rows but
    at 1M topped out at 0.941 (0.932 held-out) at ef_search 1000, after a 786 s build,
    where IVFFlat with 1,000 lists reached 0.974 at probes 24 after 139 s; 500k lies
    between the two measured sizes and is an estimate, not a measured crossover. The
    catalog keeps ``auto``; the kind in use is that of the index built (``<table>_hnsw``
    or ``<table>_ivfflat``), found again by a later open. ``hnsw``, ``ivfflat`` and
    ``none`` name the kind outright, and a collection recorded with one keeps it.

    The build sizes ``maintenance_work_mem`` to the index and logs a warning, kept in
    ``build_warning``, when the graph will not fit (pgvector then builds on disk, several
    times slower); how it is sized, and measured build times: :mod:`vectorstores.pg_index`.

Search
    Cosine distance (``vector_cosine_ops``), reported as ``1 - distance``. Without a
    filter the index answers. With a filter ragkit chooses, because PostgreSQL's estimates
    for jsonb conditions are constants (5 rows for any containment, half the table for
    anything else): when the filter has an equality the GIN index can serve, it counts the
    matches through it up to the break-even point and answers exactly below it (50k rows:
    1.3 ms at 1% against 38 ms for the HNSW scan; on IVFFlat the break-even point is at
    least the rows its scan reads anyway, probes x rows / lists: at 1M rows, 1,000 lists
    and probes 24 the index path gave recall 0.854 with a 1% filter, see
    :func:`vectorstores.pg_sql.ivfflat_cutoff`); otherwise it takes the HNSW index with
    pgvector 0.8's iterative scan (``relaxed_order``; rows re-sorted by distance outside
    the scan), which walks on until ``ef_search`` rows match, of which the ``k`` nearest
    are kept (stopping at the first ``k`` matches gave recall@10 0.82 at 1% of 1M rows),
    within a budget of tuples that costs about one exact scan. An index scan that still comes back short is repeated exactly, so
    a search returns ``min(k, matching)`` rows. Search statements are never prepared: a
    cached plan would ignore the per-query ``SET LOCAL`` settings. ``filtered_search``
    pins the choice (``index`` or ``exact``); :meth:`PgvectorStore.explain` shows the plan.

A recall target
    ``calibrate(target)`` (``rag ingest --recall``, default 0.95) chooses the smallest
    ``ef_search`` (HNSW) or ``probes`` (IVFFlat) whose recall@10, measured on the
    collection's own vectors against an exact scan, reaches the target; an ``index=auto``
    collection whose HNSW graph falls short with ``auto_ivfflat_rows`` rows or more is
    rebuilt as IVFFlat. The details: :mod:`vectorstores.pg_recall`.

A server by DSN
    A store holds one connection (the store serialises its calls; no pool: each reader
    process or thread opens its own store, and ``psycopg_pool`` is not a dependency).
    Transient errors (connection refused or reset, the server closed the connection or is
    restarting) are retried with exponential backoff (:data:`vectorstores.retry.
    SERVER_BACKOFF`: 5 attempts within 10 s), reconnecting first; every retried piece of
    work is one transaction or a read, and writes are idempotent. A server still away
    after that is a :class:`~rag.errors.StoreError` that names it (host, port, database;
    never the password) and says it cannot be reached. Connect, keepalive and statement
    timeouts bound the waits (see :mod:`vectorstores.pg_catalog`).

Read-only folders
    The embedded server writes to its folder even to answer searches, so opening a store on
    a folder this process cannot write to (a read-only mount, say) raises
    :class:`~rag.errors.StoreError` saying so; a server named by ``config.url`` serves
    such data instead.

Filters are translated in :mod:`vectorstores.pg_sql` with the reference semantics; metadata
keys travel as parameters (``metadata -> %s``), so any key the rule allows works, and jsonb
keeps 64-bit integers and doubles exactly.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from rag import contract
from rag.errors import CollectionNotFoundError, ConfigError, RagError, StoreError
from rag.filters import ALL_OPS, Filter, parse, require_supported
from rag.store import (
    MAX_K,
    Capabilities,
    StoreBase,
    StoreConfig,
    folder_writable,
    read_options,
)
from rag.types import Chunk, Hit
from vectorstores import pg_sql as q
from vectorstores.pg_catalog import Session, describe, drop_collection, open_collection
from vectorstores.pg_index import IndexMixin
from vectorstores.pg_recall import RecallMixin
from vectorstores.retry import Unreachable, retry

_BATCH = 5_000  # ids per "= ANY(...)"
_SQL = q.sql.SQL
_T = TypeVar("_T")


class PgvectorStore(IndexMixin, RecallMixin, StoreBase):
    """One collection in PostgreSQL with pgvector (see the module docstring).

    Options: ``index`` (``auto``, the default: HNSW or IVFFlat by the table's size when
    the index is built; ``hnsw``; ``ivfflat``; or ``none`` for exact search), ``m`` and
    ``ef_construction`` (HNSW build), ``ef_search`` (HNSW query), ``lists`` and ``probes``
    (IVFFlat; 0 means pgvector's advice), ``maintenance_work_mem`` (``auto`` or a size such
    as ``2GB``), ``halfvec`` (``auto``, true, false), ``iterative_scan``
    (``relaxed_order``, ``strict_order``, ``off``; ``strict_order`` needs ``index=hnsw``),
    ``max_scan_tuples``, ``index_min_rows`` (the size from which indexes are built),
    ``auto_ivfflat_rows`` (``index=auto`` builds IVFFlat from this many rows, HNSW below;
    :data:`~vectorstores.pg_sql.AUTO_IVFFLAT_ROWS`, 500,000, an estimate) and
    ``filtered_search`` (``auto``: estimate and choose; ``index``: always the ANN index;
    ``exact``). ``index``, ``m``, ``ef_construction``, ``lists`` and ``halfvec`` are
    recorded when the collection is created; other values later are a
    :class:`~rag.errors.ConfigError`. An ``index=auto`` collection stays ``auto`` in the
    catalog; the kind it searches with is that of the index it has.

    ``calibrate`` chooses ``ef_search`` or ``probes`` for a recall target, and rebuilds an
    ``index=auto`` collection's HNSW index as IVFFlat when that cannot reach it (see
    :mod:`vectorstores.pg_recall`). After a build, ``last_build`` says what it did (the
    index kind, rows, seconds, memory; for ``index=auto``, why that kind) and
    ``build_warning`` holds its memory warning, if any; ``last_search`` says how the last
    search ran (its plan, rows, and the scan settings the server confirmed).
    """

    name: ClassVar[str] = "pgvector"
    capabilities: ClassVar[Capabilities] = Capabilities(
        filter_ops=ALL_OPS, exact_search=False, calibrate=True
    )
    description: ClassVar[str] = "PostgreSQL + pgvector: embedded server, or yours with RAG_PG_DSN"

    def __init__(
        self, collection: str, *, dim: int, config: StoreConfig, create: bool = True
    ) -> None:
        self.collection = collection  # checked before it names a table
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= q.MAX_DIM:
            raise ConfigError(
                f"pgvector dimension must be an integer in 1-{q.MAX_DIM}, got {dim!r}"
            )
        self.dim = dim
        self._opts = q.check_options(read_options(config.options, q.DEFAULTS, backend=self.name))
        self._table = q.table_name(collection)
        self._table_id = q.ident(q.SCHEMA, self._table)
        self._lock = threading.RLock()
        self._closed = False
        self._server: Any = None
        self._dirty = False  # rows written since the index policy was last applied
        self._checked = False  # the policy was applied since this object opened
        self._indexed = False  # the ANN index exists (once seen, it stays)
        self._gin = False  # the GIN index on metadata exists
        self._built_lists = 0
        self._built_kind: str | None = None  # index=auto: the kind of the index found
        self._budget = int(self._opts["max_scan_tuples"])
        self.build_warning: str | None = None
        self.last_build: dict[str, Any] | None = None
        self.last_search: dict[str, Any] | None = None
        label = f"pgvector collection {collection!r}"
        if config.url:
            self._session = Session(config.url, describe(config.url), label)
        else:
            root = Path(config.data_dir)
            if not create and not (root / "pgdata" / "PG_VERSION").is_file():
                raise CollectionNotFoundError(f"{label} does not exist (no server in {root})")
            if not folder_writable(root):
                raise StoreError(
                    f"{label}: the folder {root} is read-only, and the embedded PostgreSQL "
                    "writes to its folder even to answer searches (its lock, its write-ahead "
                    "log); copy the folder somewhere writable, or use a PostgreSQL server "
                    "(--store-url or RAG_PG_DSN)"
                )
            from vectorstores import pgserver

            try:
                self._server = pgserver.acquire(root)
            except OSError as e:
                raise StoreError(
                    f"{label}: cannot start the embedded PostgreSQL in {root}: {e}"
                ) from e
            self._session = Session(self._server.dsn, f"the embedded PostgreSQL in {root}", label)
        try:
            self._retrying("open", lambda: self._session.connect())
            self._layout = open_collection(
                self._session,
                collection,
                dim=dim,
                opts=self._opts,
                explicit=set(config.options),
                create=create,
            )
            self._session.setup()
            self._check_scan(self._opts)
            if self._layout.index_kind == "auto":  # the kind in use: the index built, if any
                self._find_indexes(self._session.conn)
        except BaseException as e:
            self._release()
            if isinstance(e, self._session.psycopg.Error):
                if self._session.transient(e):
                    raise self._session.unreachable(e, "open", "the connection broke") from e
                raise self._session.wrap(e, "open") from e
            raise
        if self._kind == "none":
            self.capabilities = dataclasses.replace(type(self).capabilities, exact_search=True)

    @property
    def _kind(self) -> str:
        """The index kind that decides how searches run: the recorded one (``hnsw``,
        ``ivfflat``, ``none``), or for ``index=auto`` the kind of the index built, and
        ``auto`` while none is."""
        if self._layout.index_kind != "auto":
            return self._layout.index_kind
        return self._built_kind or "auto"

    def _check_scan(self, opts: Mapping[str, Any]) -> None:
        if opts["iterative_scan"] == "strict_order" and self._layout.index_kind in (
            "ivfflat",
            "auto",
        ):
            raise ConfigError(
                f"pgvector collection {self.collection!r} has index={self._layout.index_kind}, "
                "and IVFFlat's iterative scan has only relaxed_order (or off)"
                + (
                    "; index=auto builds IVFFlat on large tables: create the collection "
                    "with index=hnsw for strict_order"
                    if self._layout.index_kind == "auto"
                    else ""
                )
            )

    def _run(self, what: str, work: Callable[[Any], _T]) -> _T:
        """``work(connection)`` under the store's lock, with driver errors worded for ragkit.

        After a transient error (the server closed the connection, restarted, or cannot
        be reached for a moment) the store reconnects and runs ``work`` again, with
        backoff (see the module docstring): each piece of work is one transaction or a
        read, and every write is idempotent.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"pgvector collection {self.collection!r} is closed")
            return self._retrying(what, lambda: work(self._session.live()))

    def _retrying(self, what: str, work: Callable[[], _T]) -> _T:
        session = self._session
        label = f"pgvector collection {self.collection!r}: {what}"
        try:
            return retry(work, transient=session.transient, what=label)
        except Unreachable as u:
            raise session.unreachable(u.error, what, u.summary()) from u.error
        except RagError:
            raise
        except session.psycopg.Error as e:
            raise session.wrap(e, what) from e

    # --- the contract --------------------------------------------------------------------------

    def _upsert(self, chunks: list[Chunk], vecs: np.ndarray) -> None:
        rows = [(c.id, c.text, q.metadata_json(c)) for c in chunks]
        embedding = _SQL("embedding")
        if self._layout.kind == "halfvec":
            embedding = _SQL("embedding::halfvec({})").format(q.sql.Literal(self.dim))
        stage = _SQL(
            "CREATE TEMP TABLE IF NOT EXISTS ragkit_stage (id text, text text, metadata text, "
            "embedding vector({})) ON COMMIT DELETE ROWS"
        ).format(q.sql.Literal(self.dim))
        copy = "COPY ragkit_stage (id, text, metadata, embedding) FROM STDIN (FORMAT BINARY)"
        merge = _SQL(
            "INSERT INTO {t} AS t (id, text, metadata, embedding) "
            "SELECT id, text, metadata::jsonb, {e} FROM ragkit_stage "
            "ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, "
            "metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding "
            "WHERE (t.text, t.metadata, t.embedding) IS DISTINCT FROM "
            "(EXCLUDED.text, EXCLUDED.metadata, EXCLUDED.embedding)"
        ).format(t=self._table_id, e=embedding)

        def write(conn: Any) -> None:
            with conn.transaction():
                self._session.no_statement_timeout()
                if not self._session.stage_ready:
                    conn.execute(stage)
                with conn.cursor().copy(copy) as cp:
                    cp.set_types(["text", "text", "text", "vector"])
                    for row, vec in zip(rows, vecs, strict=True):
                        cp.write_row((*row, vec))
                conn.execute(merge)
            self._session.stage_ready = True

        self._run("upsert", write)
        self._dirty = True

    def _delete(self, ids: list[str]) -> None:
        query = _SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self._table_id)

        def write(conn: Any) -> None:
            with conn.transaction():
                self._session.no_statement_timeout()
                conn.execute(query, [ids])

        self._run("delete", write)

    def _search(self, vector: np.ndarray, k: int, where: Filter | None) -> list[Hit]:
        rows = self._query(vector, k, where, explain=False)
        return [Hit(cid, 1.0 - float(d), Chunk(cid, text, meta)) for cid, text, meta, d in rows]

    def explain(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        where: Filter | Mapping[str, Any] | None = None,
    ) -> str:
        """The plan ``search`` runs for these arguments (EXPLAIN ANALYZE), for tuning."""
        k = contract.check_k(k, limit=MAX_K)
        qv = contract.check_query(vector, self.dim, store=self.name, collection=self.collection)
        flt = parse(where)
        require_supported(flt, self.capabilities.filter_ops, self.name)
        return "\n".join(r[0] for r in self._query(qv, k, flt, explain=True))

    def _query(self, qv: np.ndarray, k: int, flt: Filter | None, *, explain: bool) -> list:
        """The rows of a search (checked input), or of its EXPLAIN with ``explain``."""
        clause, fparams = q.where_clause(flt) if flt is not None else (None, [])
        query = self._search_sql(clause)
        if explain:
            query = _SQL("EXPLAIN (ANALYZE, COSTS OFF) ") + query

        def read(conn: Any) -> list:
            self.last_search = None
            self._apply_policy(conn)
            applied: dict[str, str] = {}
            with conn.transaction():
                how, fetch = "exact", k
                if self._indexed:
                    how = self._choose(conn, flt, clause, fparams, k)
                    applied = self._scan_settings(conn, k, how, forced=flt is not None)
                    fetch = self._fetch(flt, how, k)
                rows = conn.execute(query, [qv, *fparams, fetch, k], prepare=False).fetchall()
                if how == "index" and len(rows) < k and not explain:
                    # The index scan came back short (a filter past the scan's budget, or
                    # no iterative scan): answer exactly.
                    applied.update(self._scan_settings(conn, k, "exact", forced=False))
                    fetch = k
                    rows = conn.execute(query, [qv, *fparams, k, k], prepare=False).fetchall()
                    how = "index, then exact"
            self.last_search = {
                **(self.last_search or {}),
                "plan": how,
                "rows": len(rows),
                "fetched": fetch,
                "settings": applied,
            }
            return rows

        return self._run("search", read)

    def _search_sql(self, clause: Any) -> Any:
        target = _SQL("%s")
        if self._layout.kind == "halfvec":
            target = _SQL("%s::halfvec({})").format(q.sql.Literal(self.dim))
        where = _SQL("WHERE {}").format(clause) if clause is not None else _SQL("")
        # relaxed_order may hand rows back slightly out of order: sort them again outside
        # the index scan. MATERIALIZED keeps the two apart, and "+ 0" keeps PostgreSQL 17+
        # from taking the CTE's ORDER BY as proof that its output is sorted.
        return _SQL(
            "WITH hits AS MATERIALIZED (SELECT id, text, metadata, embedding <=> {target} "
            "AS distance FROM {t} {where} ORDER BY distance LIMIT %s) "
            "SELECT id, text, metadata, distance FROM hits ORDER BY distance + 0 LIMIT %s"
        ).format(target=target, t=self._table_id, where=where)

    def _fetch(self, flt: Filter | None, how: str, k: int) -> int:
        """Rows a filtered HNSW index scan collects before the best ``k`` are kept.

        The iterative scan hands matching rows over as its walk meets them and stops at
        the scan's LIMIT; asked for only ``k``, it stops at the first ``k`` matches, which
        a sparse filter makes a poor sample of the nearest (recall@10 0.82 at 1% of 1M
        rows). Asked for ``ef_search`` rows, it walks on as an unfiltered search's
        candidate list would, and the ``k`` nearest of those are kept."""
        if flt is None or how != "index" or self._kind != "hnsw":
            return k
        return min(1000, max(int(self._opts["ef_search"]), k))

    def _choose(self, conn: Any, flt: Filter | None, clause: Any, params: list, k: int) -> str:
        """ "index" or "exact" for a search on a table with an ANN index; sets the budget."""
        self._budget = int(self._opts["max_scan_tuples"])
        choice = str(self._opts["filtered_search"])
        if flt is None or choice != "auto":
            return "index" if flt is None or choice == "index" else "exact"
        # PostgreSQL's estimates for jsonb conditions are constants (5 rows for any
        # containment, half the table otherwise), so ragkit decides itself.
        rows = int(
            conn.execute(
                "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = %s::regclass",
                [f"{q.SCHEMA}.{self._table}"],
            ).fetchone()[0]
        ) or self._count(conn)
        if self._gin and q.gin_indexable(flt):
            # Count the matches through the GIN index, up to the break-even point: for
            # HNSW against its walk (gin_cutoff), for IVFFlat against the rows of the lists
            # it reads (ivfflat_cutoff).
            if self._kind == "hnsw":
                cutoff = q.gin_cutoff(rows, max(int(self._opts["ef_search"]), k))
            else:
                cutoff = q.ivfflat_cutoff(rows, k, self._built_lists, self._probes())
            counted = conn.execute(
                _SQL("SELECT count(*) FROM (SELECT FROM {} WHERE {} LIMIT %s) s").format(
                    self._table_id, clause
                ),
                [*params, cutoff],
                prepare=False,
            ).fetchone()[0]
            self.last_search = {"matching_rows": counted, "cutoff": cutoff}
            if counted < cutoff:
                return "exact"
        self._budget = q.scan_budget(rows, self._budget)
        return "index"

    def _probes(self) -> int:
        lists = max(self._built_lists, 1)
        return min(lists, int(self._opts["probes"]) or max(1, round(lists**0.5)))

    def _scan_settings(self, conn: Any, k: int, how: str, *, forced: bool) -> dict[str, str]:
        """Set the scan's settings for the current transaction; returns them as the server
        reports them."""
        opts = self._opts
        if how == "exact":  # no ANN index scan; sequential or GIN bitmap scans
            settings: dict[str, Any] = {
                "enable_indexscan": "off",
                "enable_seqscan": "on",
                "enable_bitmapscan": "on",
            }
        elif self._kind == "hnsw":
            settings = {"hnsw.ef_search": min(1000, max(int(opts["ef_search"]), k))}
            if self._layout.iterative_scan:
                settings["hnsw.iterative_scan"] = opts["iterative_scan"]
                settings["hnsw.max_scan_tuples"] = self._budget
        else:
            settings = {"ivfflat.probes": self._probes()}
            if self._layout.iterative_scan:
                settings["ivfflat.iterative_scan"] = opts["iterative_scan"]
        if how != "exact" and forced:
            # The planner's jsonb estimates are constants; the choice was made above.
            settings.update(enable_seqscan="off", enable_bitmapscan="off")
        parts = _SQL(", ").join(_SQL("set_config(%s, %s, true)") for _ in settings)
        params = [str(x) for item in settings.items() for x in item]
        values = conn.execute(_SQL("SELECT ") + parts, params, prepare=False).fetchone()
        return dict(zip(settings, values, strict=True))

    def _get(self, ids: list[str]) -> list[Chunk]:
        query = _SQL("SELECT id, text, metadata FROM {} WHERE id = ANY(%s)").format(self._table_id)

        def read(conn: Any) -> dict[str, Chunk]:
            found: dict[str, Chunk] = {}
            for start in range(0, len(ids), _BATCH):
                part = list(dict.fromkeys(ids[start : start + _BATCH]))
                for cid, text, meta in conn.execute(query, [part]):
                    found[cid] = Chunk(cid, text, meta)
            return found

        found = self._run("get", read)
        return [found[i] for i in ids if i in found]

    def count(self) -> int:
        return self._run("count", self._count)

    def _count(self, conn: Any) -> int:
        return int(
            conn.execute(_SQL("SELECT count(*) FROM {}").format(self._table_id)).fetchone()[0]
        )

    def _scan(self, batch_size: int) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        for page in self._pages(_SQL("id, text, metadata"), batch_size, "scan"):
            chunks = [Chunk(r[0], r[1], r[2]) for r in page]
            yield chunks, np.vstack([r[3] for r in page]).astype(np.float32, copy=False)

    @property
    def _vector(self) -> Any:
        """The embedding column as float32 vectors (halfvec converted)."""
        return _SQL("embedding::vector" if self._layout.kind == "halfvec" else "embedding")

    def _pages(self, columns: Any, batch_size: int, what: str) -> Iterator[list]:
        """Pages of rows ``(columns..., vector)`` in id order; ``columns`` start with id."""
        head = _SQL("SELECT {}, {} FROM {} ").format(columns, self._vector, self._table_id)
        first = head + _SQL("ORDER BY id LIMIT %s")
        after = head + _SQL("WHERE id > %s ORDER BY id LIMIT %s")  # keyset pagination
        last: str | None = None

        def page_after(conn: Any) -> list:
            if last is None:
                return conn.execute(first, [batch_size], binary=True).fetchall()
            return conn.execute(after, [last, batch_size], binary=True).fetchall()

        while True:
            page = self._run(what, page_after)
            if not page:
                return
            yield page
            if len(page) < batch_size:
                return
            last = page[-1][0]

    def drop(self) -> None:
        with self._lock:
            self._run("drop", lambda conn: drop_collection(self._session, self.collection))
            self._closed = True
            self._release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if self._dirty:
                    self._run("build the indexes on close", self._apply_policy)
            finally:
                self._closed = True
                self._release()

    def _release(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
        server, self._server = self._server, None
        if server is not None:
            server.stop()
