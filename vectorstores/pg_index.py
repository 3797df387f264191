"""The index policy and index builds of :class:`vectorstores.pgvector.PgvectorStore`.

:class:`IndexMixin` holds ``flush``, ``build_index``, ``index_name`` and what they use:
finding a collection's indexes, applying the policy (no index below ``index_min_rows``;
``index=auto`` resolved by the rows indexed), and the build itself, one transaction under
the collection's build lock (see "Index policy" in :mod:`vectorstores.pgvector`).

Build memory
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
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from vectorstores import pg_sql as q
from vectorstores.pg_catalog import Layout, Session

log = logging.getLogger("vectorstores.pgvector")  # the store's logger, as in pg_catalog

_REMOTE_BUILD_CAP = 2**30  # maintenance_work_mem for a server whose memory we cannot see
_BUILD_MEMORY_SHARE = 0.5  # of the memory a local machine can still give
_SQL = q.sql.SQL
_T = TypeVar("_T")


class IndexMixin:
    """The index policy and builds of a :class:`~vectorstores.pgvector.PgvectorStore`."""

    # The store's state, set in PgvectorStore.__init__ (annotations only).
    collection: str
    dim: int
    _opts: dict[str, Any]
    _layout: Layout
    _session: Session
    _server: Any
    _table: str
    _table_id: Any
    _dirty: bool
    _checked: bool
    _indexed: bool
    _gin: bool
    _built_lists: int
    _built_kind: str | None
    build_warning: str | None
    last_build: dict[str, Any] | None

    if TYPE_CHECKING:  # defined by PgvectorStore

        @property
        def _kind(self) -> str: ...

        def _run(self, what: str, work: Callable[[Any], _T]) -> _T: ...

        def _count(self, conn: Any) -> int: ...

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
