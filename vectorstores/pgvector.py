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

    The build sets ``maintenance_work_mem`` to the estimated size of the graph
    (rows x (8 + 4 dim + 32 m + 200) bytes, calibrated on pgvector 0.8.6), capped by half
    the memory the machine can still give (local server), 1 GB (remote server, unless the
    option says more) and the server's limit; when the graph will not fit, a warning is
    logged and kept in ``build_warning``: pgvector then builds on disk, several times
    slower. Local builds use a parallel worker per spare core. Measured on 2 busy cores, 50k
    clustered 384-d vectors, m 16, ef_construction 64: 37 s sized (135 MB, one worker), 64 s
    sized without the worker, 74 s at PostgreSQL's 64 MB default (the graph spilled after
    28,373 tuples); an exact scan took 26 ms at 10k rows and 60 ms at 50k, an HNSW search
    2-5 ms.

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
    ``calibrate(target)`` (``rag ingest --recall``, default 0.95) chooses the search
    parameter of the collection's index: the smallest ``ef_search`` (HNSW; 16 to 1000) or
    ``probes`` (IVFFlat; 1 up to every list, which is exact) whose recall@10 reaches the
    target, measured on up to 500 of the collection's own vectors (fixed seed, each query's
    own row left out) against an exact scan in numpy (:mod:`vectorstores.calibration`).
    Searches set it per transaction as they set every scan setting (``last_search`` shows
    the values the server confirmed). The index's build options stay the collection's
    (recorded at creation); it builds the index if one is due first, and without one
    (``index=none``, or below ``index_min_rows``) the scan is exact and nothing is chosen.
    A named ``ef_search`` or ``probes`` is measured, not changed. One case changes the
    index: an ``index=auto`` collection whose HNSW graph (built while the table was
    smaller) falls short of the target at ef_search 1000 while the table now holds at
    least ``auto_ivfflat_rows`` rows is rebuilt as IVFFlat (pgvector's advised lists;
    IVFFlat built, then the HNSW index dropped, in one transaction under the build lock),
    and ``probes`` is chosen for it; the calibration's note says so. A store that another
    process had open meanwhile keeps searching with HNSW's settings until it is opened
    again. A collection created with ``index=hnsw`` is never switched: its note says the
    target was not reached and what would reach it. pgvector's default ef_search of 40 reached recall@10 0.885 at
    100k and 0.672 at 1M in the benchmark (eval/results/bench-sweep.jsonl).

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
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from rag import contract
from rag.errors import CollectionNotFoundError, ConfigError, RagError, StoreError
from rag.filters import ALL_OPS, Filter, parse, require_supported
from rag.store import (
    MAX_K,
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
from vectorstores import pg_sql as q
from vectorstores.pg_catalog import Session, describe, drop_collection, open_collection
from vectorstores.retry import Unreachable, retry

log = logging.getLogger(__name__)

_BATCH = 5_000  # ids per "= ANY(...)"
_REMOTE_BUILD_CAP = 2**30  # maintenance_work_mem for a server whose memory we cannot see
_BUILD_MEMORY_SHARE = 0.5  # of the memory a local machine can still give
_SQL = q.sql.SQL
_T = TypeVar("_T")
_PARAMS = {"hnsw": "ef_search", "ivfflat": "probes"}  # what calibrate chooses, by index


class PgvectorStore(StoreBase):
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
    ``index=auto`` collection's HNSW index as IVFFlat when that cannot reach it (see the
    module docstring). After a build, ``last_build`` says what it did (the index kind,
    rows, seconds, memory; for ``index=auto``, why that kind) and ``build_warning`` holds
    its memory warning, if any; ``last_search`` says how the last search ran (its plan,
    rows, and the scan settings the server confirmed).
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

    # --- indexes -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Apply the index policy now: build the indexes if the table has grown past
        ``index_min_rows`` without them (``close()`` and the first search do the same)."""
        self._run("flush", self._apply_policy)

    def build_index(self, *, force: bool = False) -> bool:
        """Build the missing indexes now: when the table holds at least ``index_min_rows``
        rows, or any rows with ``force``. Returns whether it built any."""

        def build(conn: Any) -> bool:
            self._checked, self._dirty = True, False
            if self._find_indexes(conn):
                return False
            rows = self._count(conn)
            if rows == 0 or (rows < int(self._opts["index_min_rows"]) and not force):
                return False
            return self._build(conn, rows)

        return self._run("build the indexes", build)

    @property
    def index_name(self) -> str:
        """The ANN index's name, in the schema ``ragkit``: ``<table>_<kind>``, where for
        ``index=auto`` the kind is the one built (``<table>_auto``, no index, before)."""
        return f"{self._table}_{self._kind}"

    def _index_kinds(self) -> tuple[str, ...]:
        """The kinds the collection's ANN index may be of (IVFFlat first: index=auto
        replaces HNSW with it, never the other way)."""
        return {"auto": ("ivfflat", "hnsw"), "none": ()}.get(
            self._layout.index_kind, (self._layout.index_kind,)
        )

    def _find_indexes(self, conn: Any) -> bool:
        """Look for the indexes; True when all the collection should have exist."""
        if not (self._gin and (self._indexed or self._kind == "none")):
            meta = f"{self._table}_meta"
            names = {f"{self._table}_{kind}": kind for kind in self._index_kinds()}
            found = dict(
                conn.execute(
                    "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
                    [q.SCHEMA, [*names, meta]],
                ).fetchall()
            )
            self._gin = meta in found
            name = next((n for n in names if n in found), None)
            if name is not None:
                options = dict(opt.split("=", 1) for opt in found[name] or [])
                self._built_lists = int(options.get("lists", 100))  # IVFFlat's default
                self._built_kind = names[name]
                self._indexed = True
        return self._gin and (self._indexed or self._kind == "none")

    def _apply_policy(self, conn: Any) -> None:
        if self._checked and not self._dirty:
            return
        self._checked, self._dirty = True, False
        if self._find_indexes(conn):
            return
        rows = self._count(conn)
        if rows and rows >= int(self._opts["index_min_rows"]):
            self._build(conn, rows)

    def _build(self, conn: Any, rows: int, *, switch: bool = False) -> bool:
        """Build the missing indexes over a table of ``rows`` rows, in one transaction
        under the collection's build lock. ``index=auto`` resolves here, where the rows are
        known: HNSW below ``auto_ivfflat_rows``, IVFFlat from there. With ``switch``
        (``calibrate`` on an auto collection whose HNSW index cannot reach the target)
        IVFFlat is built in the HNSW index's place and the HNSW index then dropped, in the
        same transaction."""
        half = self._layout.kind == "halfvec"
        ops = _SQL("halfvec_cosine_ops" if half else "vector_cosine_ops")
        threshold = int(self._opts["auto_ivfflat_rows"])
        kind = "ivfflat" if switch else self._kind
        if kind == "auto":
            kind = q.auto_index_kind(rows, threshold)
        what, need, ann = "the GIN index on metadata", 0, None  # GIN makes do with any memory
        if kind == "hnsw" and not self._indexed:
            need = q.hnsw_graph_bytes(rows, self.dim, self._layout.m, half=half)
            what = f"the HNSW graph of {rows:,} vectors"
            with_ = _SQL("m = {}, ef_construction = {}").format(
                q.sql.Literal(self._layout.m), q.sql.Literal(self._layout.ef_construction)
            )
            ann = _SQL("CREATE INDEX {} ON {} USING hnsw (embedding {}) WITH ({})")
        elif kind == "ivfflat" and (switch or not self._indexed):
            lists = self._layout.lists or q.ivfflat_lists(rows)
            need = q.ivfflat_build_bytes(rows, self.dim, lists, half=half)
            what = f"the IVFFlat k-means sample for {lists} lists"
            with_ = _SQL("lists = {}").format(q.sql.Literal(lists))
            ann = _SQL("CREATE INDEX {} ON {} USING ivfflat (embedding {}) WITH ({})")
        memory, workers = self._build_memory(conn, need, what)
        started = time.perf_counter()
        self._session.notices = []
        replaced: str | None = None  # the HNSW index a switch drops
        try:
            with conn.transaction():
                self._session.no_statement_timeout()  # a build may rightly take hours
                self._session.lock(f"ragkit:build:{self.collection}")
                self._gin = self._indexed = False
                self._built_kind = None
                done = self._find_indexes(conn)
                if switch:
                    if not (self._indexed and self._kind == "hnsw"):
                        return False  # another process replaced it meanwhile
                    replaced = self.index_name
                    self._indexed, self._built_kind = False, None
                elif done:  # another process built them meanwhile
                    return False
                conn.execute(
                    "SELECT set_config('maintenance_work_mem', %s, true)",
                    [q.format_size(memory)],
                )
                if workers is not None:
                    conn.execute(
                        "SELECT set_config('max_parallel_maintenance_workers', %s, true)",
                        [str(workers)],
                    )
                if ann is not None and not self._indexed:
                    log.info(
                        "pgvector collection %r: building the %s index over %d rows with "
                        "maintenance_work_mem %s",
                        self.collection,
                        kind,
                        rows,
                        q.format_size(memory),
                    )
                    name = q.ident(f"{self._table}_{kind}")
                    conn.execute(ann.format(name, self._table_id, ops, with_))
                if replaced is not None:
                    # Dropped after the build: CREATE INDEX holds off writers only, DROP
                    # INDEX readers too (until the commit, which follows at once).
                    conn.execute(_SQL("DROP INDEX {}").format(q.ident(q.SCHEMA, replaced)))
                if not self._gin:
                    conn.execute(
                        _SQL("CREATE INDEX {} ON {} USING gin (metadata jsonb_path_ops)").format(
                            q.ident(f"{self._table}_meta"), self._table_id
                        )
                    )
                conn.execute(_SQL("ANALYZE {}").format(self._table_id))
        except BaseException:
            # Rolled back (or unknown): look at the indexes afresh next time.
            self._gin = self._indexed = self._checked = False
            self._built_kind = None
            raise
        self._find_indexes(conn)
        self.last_build = {
            "index": self._kind,
            "rows": rows,
            "seconds": round(time.perf_counter() - started, 3),
            "maintenance_work_mem": q.format_size(memory),
            "estimated_bytes": need,
            "parallel_workers": workers,
            "notices": list(self._session.notices),
        }
        if self._layout.index_kind == "auto":
            self.last_build["auto"] = (
                f"HNSW could not reach the recall target at {rows:,} rows: rebuilt as IVFFlat"
                if switch
                else f"{kind} at {rows:,} rows (IVFFlat from auto_ivfflat_rows, {threshold:,})"
            )
        return True

    def _build_memory(self, conn: Any, need: int, what: str) -> tuple[int, int | None]:
        """maintenance_work_mem for a build needing ``need`` bytes, and the parallel
        workers to ask for (None: the server's setting); sets ``build_warning``."""
        current, server_max = conn.execute(
            "SELECT setting::bigint * 1024, max_val::bigint * 1024 FROM pg_settings "
            "WHERE name = 'maintenance_work_mem'"
        ).fetchone()
        host = conn.info.host or "/"
        local = (
            self._server is not None
            or host.startswith("/")
            or host in ("localhost", "127.0.0.1", "::1")
        )
        wanted = int(need * 1.1) + 16 * 2**20  # headroom for the allocator
        option = str(self._opts["maintenance_work_mem"])
        if option != "auto":
            memory, why = q.parse_size(option), "the maintenance_work_mem option"
        elif local:
            free = q.available_memory()
            memory = max(current, min(wanted, int(free * _BUILD_MEMORY_SHARE)))
            why = f"half of the {free // 2**20} MB of memory available"
        else:
            memory = max(current, min(wanted, _REMOTE_BUILD_CAP))
            why = "the cap for a remote server; raise it with the maintenance_work_mem option"
        if memory > server_max:
            memory, why = server_max, "the server's limit"
        memory = max(memory, 2**20)
        self.build_warning = None
        if need > memory:
            self.build_warning = (
                f"pgvector collection {self.collection!r}: {what} needs about "
                f"{need / 2**20:.0f} MB but maintenance_work_mem can only be "
                f"{memory / 2**20:.0f} MB ({why}); the index build will spill to disk and be "
                "several times slower"
            )
            log.warning("%s", self.build_warning)
        workers = max(0, min((os.cpu_count() or 1) - 1, 4)) if local else None
        return memory, workers

    # --- the recall target (see the module docstring) ------------------------------------------

    def calibrate(
        self, target: float, *, fixed: Mapping[str, OptionValue] | None = None
    ) -> Calibration:
        started = time.perf_counter()
        fixed = dict(fixed or {})
        named = self._named(fixed)
        with self._lock:
            self._run(
                "calibrate", lambda conn: (self._apply_policy(conn), self._find_indexes(conn))
            )
            # The named options are those the store was opened with; applied again here for
            # a caller that names them only now.
            self._opts.update({k: v for k, v in named.items() if k in fixed})
            count, kind = self.count(), self._kind

            result = calibration.recorder(target, count=count, fixed=fixed, started=started)

            if kind == "none":
                return result({}, 1.0, 0, "index=none: exact scan")
            if not self._indexed:
                rows = int(self._opts["index_min_rows"])
                what = "no index (index=auto)" if kind == "auto" else f"no {kind} index"
                return result({}, 1.0, 0, f"{what} below {rows} rows: exact scan")
            if count < 2:
                return result({}, 1.0, 0, "too few chunks to measure")
            param = _PARAMS[kind]
            queries, measure = self._recall_meter(count)
            value, got, reached = self._smallest(param, fixed, measure, target)
            if param in fixed:
                return result({}, got, queries, f"{param}={value} named: measured")
            auto = self._layout.index_kind == "auto"
            if reached:
                label = f"auto ({kind})" if auto else kind
                return result(
                    {param: value},
                    got,
                    queries,
                    f"{label}: the smallest {param} that reaches the target",
                )
            threshold = int(self._opts["auto_ivfflat_rows"])
            if kind == "hnsw" and auto and count >= threshold:
                return self._switch(result, count, value, got, fixed, measure, target, queries)
            note = f"target not reached: {got:.3f} at the largest {param}, {value}"
            if kind == "hnsw":
                # At 1M the default graph (m 16, ef_construction 64) tops out at 0.94.
                if auto:
                    note += (
                        f"; index=auto rebuilds it as IVFFlat from {threshold:,} rows "
                        "(auto_ivfflat_rows)"
                    )
                note += (
                    "; a collection built with index=ivfflat, or a larger m and "
                    "ef_construction, reaches more (drop it and ingest again)"
                )
            return result({param: value}, got, queries, note)

    def _smallest(
        self,
        param: str,
        fixed: Mapping[str, OptionValue],
        measure: Callable[[str, int], calibration.Recall],
        target: float,
    ) -> tuple[int, float, bool]:
        """The smallest value of ``param`` that reaches ``target`` (the named one, if
        ``fixed`` names it), set in the options; a failed measure leaves them alone."""
        if param in fixed:
            values = [int(self._opts[param])]
        else:
            values = q.calibration_values(self._kind, self._built_lists)
        before = self._opts[param]
        try:
            value, got, reached = calibration.smallest_reaching(
                values, lambda v: measure(param, v), target
            )
        except BaseException:
            self._opts[param] = before
            raise
        self._opts[param] = value
        return value, got, reached

    def _switch(
        self,
        result: Callable[..., Calibration],
        count: int,
        ef_search: int,
        hnsw_got: float,
        fixed: Mapping[str, OptionValue],
        measure: Callable[[str, int], calibration.Recall],
        target: float,
        queries: int,
    ) -> Calibration:
        """``index=auto``, at least ``auto_ivfflat_rows`` rows, and the HNSW index short of
        the target at the largest ef_search: rebuild it as IVFFlat (pgvector's advised
        lists, unless the collection was created with ``lists``) and choose ``probes``.
        The HNSW graph was built on a smaller table (or under a larger threshold); at 1M
        rows the default graph tops out at recall 0.941 where IVFFlat reaches 0.974
        (docs/benchmarks.md)."""
        self._run(
            "rebuild the index as IVFFlat",
            lambda conn: self._build(conn, count, switch=True),
        )
        head = f"auto: HNSW reached {hnsw_got:.3f} at ef_search {ef_search}"
        if self._kind != "ivfflat":  # the HNSW index went away meanwhile
            return result({}, hnsw_got, queries, f"{head}; the index changed: measure again")
        head += f"; rebuilt as IVFFlat ({self._built_lists:,} lists) at {count:,} rows"
        value, got, reached = self._smallest("probes", fixed, measure, target)
        if "probes" in fixed:
            return result({}, got, queries, f"{head}; probes={value} named: measured")
        if reached:
            note = f"{head}; probes {value} reaches the target"
        else:
            note = f"{head}; target not reached: {got:.3f} at the largest probes, {value}"
        return result({"probes": value}, got, queries, note)

    def _named(self, fixed: Mapping[str, OptionValue]) -> dict[str, Any]:
        """The options ``fixed`` names, checked; build options must be the collection's."""
        named = q.check_options(read_options(fixed, q.DEFAULTS, backend=self.name))
        self._check_scan(named)
        layout = self._layout
        recorded = {
            "index": layout.index_kind,
            "m": layout.m,
            "ef_construction": layout.ef_construction,
            "lists": layout.lists,
        }
        differ = [
            f"{key}={recorded[key]}"
            for key in q.BUILD_OPTIONS
            if key in fixed and named[key] != recorded[key]
        ]
        if differ:
            raise ConfigError(
                f"pgvector collection {self.collection!r} was created with "
                f"{', '.join(differ)}, and a recall target chooses only ef_search (HNSW) or "
                "probes (IVFFlat); leave those options out, or drop the collection and ingest "
                "again"
            )
        return named

    def _recall_meter(self, count: int) -> tuple[int, Callable[[str, int], calibration.Recall]]:
        """The sample size, and a function from a search parameter and its value to the
        recall@10 that searches give at it, on a sample of the collection's own vectors
        (each query's own row left out), against an exact scan
        (:mod:`vectorstores.calibration`); the exact neighbours are found once."""
        k = min(calibration.K, count - 1)
        ids = self._run(
            "calibrate",
            lambda conn: [
                r[0] for r in conn.execute(_SQL("SELECT id FROM {}").format(self._table_id))
            ],
        )
        # Rows are numbered for the numpy helpers; a row written meanwhile gets a new number.
        number = {cid: i for i, cid in enumerate(ids)}
        picked = calibration.sample(
            np.arange(len(ids)), calibration.sample_size(len(ids), self.dim)
        )
        by_id = dict(
            self._run(
                "calibrate",
                lambda conn: conn.execute(
                    _SQL("SELECT id, {} FROM {} WHERE id = ANY(%s)").format(
                        self._vector, self._table_id
                    ),
                    [[ids[i] for i in picked]],
                    binary=True,
                ).fetchall(),
            )
        )
        queries = _unit(np.vstack([by_id[ids[i]] for i in picked]))

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for page in self._pages(_SQL("id"), 20_000, "calibrate"):
                rows = [number.setdefault(r[0], len(number)) for r in page]
                yield np.array(rows), _unit(np.vstack([r[1] for r in page]))

        truth = calibration.exact_neighbours(queries, picked, batches(), k)
        search = self._search_sql(None)

        def measure(param: str, value: int) -> calibration.Recall:
            self._opts[param] = value

            def read(conn: Any) -> list[list[int]]:
                with conn.transaction():
                    self._budget = int(self._opts["max_scan_tuples"])
                    self._scan_settings(conn, k + 1, "index", forced=False)
                    return [
                        [
                            number.get(r[0], -1)
                            for r in conn.execute(search, [qv, k + 1, k + 1], prepare=False)
                        ]
                        for qv in queries
                    ]

            return calibration.recall(self._run("calibrate", read), picked, truth)

        return len(picked), measure


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: cosine similarity as an inner product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
