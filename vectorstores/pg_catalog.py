"""The pgvector store's connection and catalog.

:class:`Session` owns the one psycopg connection of a store: it connects with a timeout and
``application_name='ragkit'``, reconnects when the server closed it, tells transient errors
(the server unreachable, restarting, or gone mid-statement) from the rest, words driver
errors for ragkit without ever showing a password from the DSN, and collects server notices.

Bounds on time (each only where the DSN and the server leave it unset): ``connect_timeout``
10 s; TCP keepalives (idle 30 s, then 3 probes 10 s apart) and ``tcp_user_timeout`` 30 s,
so that a server host that vanishes mid-statement is noticed within about a minute; and a
``statement_timeout`` of 60 s for reads (writes and index builds lift it: a build may
rightly take hours). A server process that stops answering while its host's kernel still
acknowledges (SIGSTOP) is noticed by none of these; PostgreSQL gives the client no timer
of its own for that case.
:func:`open_collection` checks pgvector, the catalog ``ragkit.collections`` and the
collection's table, creating what is missing, and returns the collection's :class:`Layout`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from rag.errors import CollectionNotFoundError, ConfigError, DimensionMismatchError, StoreError
from vectorstores import pg_sql as q

log = logging.getLogger("vectorstores.pgvector")

_CONNECT_TIMEOUT_S = 10
#: libpq parameters that bound a connection's waits, used where the DSN sets none.
_TCP_BOUNDS = {
    "connect_timeout": str(_CONNECT_TIMEOUT_S),
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
#: statement_timeout for reads, where the server's is 0 (none).
READ_TIMEOUT = "60s"
# Connection failures worth another attempt: the server is down, starting, stopping or
# restarting, or the network dropped. A refused login or a missing database is not.
_TRANSIENT_CONNECT = (
    "connection refused",
    "no such file or directory",  # the unix socket is gone while the server restarts
    "timeout expired",
    "server closed the connection",
    "connection reset",
    "could not receive data",
    "could not send data",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many connections",
)
_SQL = q.sql.SQL
_FIND_EXTENSION = (
    "SELECT e.extversion, n.nspname FROM pg_extension e "
    "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
)


@dataclass(frozen=True, slots=True)
class Layout:
    """How a collection is stored, as its catalog row records it."""

    table: str
    kind: str  # vector | halfvec
    index_kind: str  # auto | hnsw | ivfflat | none (auto: resolved when the index is built)
    m: int
    ef_construction: int
    lists: int  # 0: chosen at build time
    pgvector: tuple[int, int]

    @property
    def iterative_scan(self) -> bool:
        return self.pgvector >= (0, 8)


class Session:
    """The store's connection to one server; ``where`` names the server in messages."""

    def __init__(self, dsn: str, where: str, label: str) -> None:
        import psycopg

        self.psycopg = psycopg
        self.dsn, self.where, self.label = dsn, where, label
        self.password = password_of(dsn)
        self.conn: Any = None
        self.ext_schema: str | None = None
        self.notices: list[str] = []
        self.stage_ready = False  # this connection has the temporary staging table

    def scrub(self, text: str) -> str:
        return text.replace(self.password, "***") if self.password else text

    def wrap(self, e: Exception, what: str) -> StoreError:
        text = self.scrub(str(e).strip() or type(e).__name__)
        return StoreError(f"{self.label} on {self.where}: {what} failed: {text}")

    def transient(self, e: BaseException) -> bool:
        """Whether ``e`` may go away on its own: the connection broke (the server closed
        it, restarted, or went away mid-statement) or could not be made for a reason of
        the kind :data:`_TRANSIENT_CONNECT` lists. Never a query's own error."""
        if not isinstance(e, self.psycopg.OperationalError):
            return False
        if self.conn is not None and (self.conn.broken or self.conn.closed):
            return True
        sqlstate = getattr(e, "sqlstate", None) or ""
        if sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300"):
            return True
        text = str(e).lower()
        return self.conn is None and any(marker in text for marker in _TRANSIENT_CONNECT)

    def unreachable(self, e: BaseException, what: str, tries: str) -> StoreError:
        """The error for a server that transient errors kept away through the retries."""
        text = self.scrub(str(e).strip() or type(e).__name__)
        return StoreError(
            f"{self.label}: {what} failed: {self.where} cannot be reached ({tries}; is it "
            f"running, and listening there?): {text}"
        )

    def connect(self) -> Any:
        """Open the connection; psycopg's errors pass through (see :meth:`transient`)."""
        psycopg = self.psycopg
        from psycopg.conninfo import conninfo_to_dict

        self.close()
        given = conninfo_to_dict(self.dsn)
        bounds = {k: v for k, v in _TCP_BOUNDS.items() if k not in given}
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=True,  # every operation runs in an explicit transaction
                application_name="ragkit",
                **bounds,
            )
        except psycopg.ProgrammingError:  # its message may quote the DSN
            raise ConfigError(
                "the pgvector store URL is not a valid PostgreSQL connection string or URI"
            ) from None
        conn.prepare_threshold = None  # never auto-prepare: plans would ignore SET LOCAL
        conn.add_notice_handler(self._on_notice)
        self.conn = conn
        if conn.info.server_version >= 140000:
            # A backend whose client died (SIGKILL) stops within a second instead of
            # finishing an index build that holds the table's lock.
            conn.execute("SELECT set_config('client_connection_check_interval', '1000', false)")
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false) "
            "WHERE current_setting('statement_timeout') = '0'",
            [READ_TIMEOUT],
        )
        if self.ext_schema is not None:
            self.setup()
        return conn

    def setup(self) -> None:
        """Make pgvector's types usable on this connection (after :func:`open_collection`)."""
        from pgvector.psycopg import register_vector

        conn = self.conn
        with conn.transaction():
            on_path = conn.execute(
                "SELECT %s = ANY(current_schemas(false))", [self.ext_schema]
            ).fetchone()[0]
            if not on_path:  # the vector type and its operators are found through it
                conn.execute(
                    "SELECT set_config('search_path', current_setting('search_path') "
                    "|| ', ' || quote_ident(%s), false)",
                    [self.ext_schema],
                )
        register_vector(conn)
        info = self.psycopg.types.TypeInfo.fetch(conn, "vector")
        conn.adapters.register_loader(info.oid, q.vector_loader())
        self.stage_ready = False

    def live(self) -> Any:
        """The connection, reconnected if the server closed it."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.connect()
        return self.conn

    def no_statement_timeout(self) -> None:
        """Lift the read timeout for the current transaction (a write, an index build)."""
        self.conn.execute("SELECT set_config('statement_timeout', '0', true)")

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as e:  # the server went away first: nothing left to release
                log.debug("pgvector: closing the connection: %s", e)

    def lock(self, key: str) -> None:
        """Take a transaction-level advisory lock named ``key``."""
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])

    def _on_notice(self, diag: Any) -> None:
        message = diag.message_primary or ""
        self.notices = [*self.notices[-19:], message]
        if "maintenance_work_mem" in message:
            log.warning("%s: %s", self.label, message)
        else:
            log.debug("%s: server notice: %s", self.label, message)


def password_of(dsn: str) -> str | None:
    """The password in a DSN, to keep it out of messages; ConfigError if it is malformed."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Error:
        # The driver's message may quote the string, password included.
        raise ConfigError(
            "the pgvector store URL (--store-url or RAG_PG_DSN) is not a valid PostgreSQL "
            "connection string or postgresql:// URI"
        ) from None
    return str(params["password"]) if params.get("password") else None


def describe(dsn: str) -> str:
    """Where a DSN points, in words, without its password."""
    from psycopg.conninfo import conninfo_to_dict

    password_of(dsn)  # validates
    params = conninfo_to_dict(dsn)
    host = params.get("host") or params.get("hostaddr") or "the default socket"
    port = f":{params['port']}" if params.get("port") else ""
    db = f", database {params['dbname']}" if params.get("dbname") else ""
    return f"PostgreSQL at {host}{port}{db}"


# --- the catalog -----------------------------------------------------------------------------


def open_collection(
    session: Session,
    collection: str,
    *,
    dim: int,
    opts: dict[str, Any],
    explicit: set[str],
    create: bool,
) -> Layout:
    """Check pgvector, the catalog and the collection's table, creating what is missing
    when ``create``; one transaction, serialised per collection by an advisory lock."""
    conn = session.conn
    catalog = q.ident(q.SCHEMA, q.CATALOG)
    with conn.transaction():
        ext_version, session.ext_schema = _extension(session, collection, create)
        version = q.version(ext_version)
        found = conn.execute("SELECT to_regclass(%s)", [f"{q.SCHEMA}.{q.CATALOG}"]).fetchone()
        if found[0] is None:
            if not create:
                raise _not_found(session, collection)
            session.lock("ragkit:catalog")
            conn.execute(_SQL("CREATE SCHEMA IF NOT EXISTS {}").format(q.ident(q.SCHEMA)))
            conn.execute(
                _SQL(
                    "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, "
                    "table_name text NOT NULL UNIQUE, dim integer NOT NULL, "
                    "kind text NOT NULL, index_kind text NOT NULL, "
                    "index_params jsonb NOT NULL, created timestamptz NOT NULL DEFAULT now())"
                ).format(catalog)
            )
        session.lock(f"ragkit:collection:{collection}")
        row = conn.execute(
            _SQL(
                "SELECT dim, kind, index_kind, index_params, "
                "to_regclass(%s || '.' || table_name) IS NOT NULL FROM {} WHERE name = %s"
            ).format(catalog),
            [q.SCHEMA, collection],
        ).fetchone()
        if row is not None and not row[4]:  # its table was dropped behind our back
            conn.execute(_SQL("DELETE FROM {} WHERE name = %s").format(catalog), [collection])
            row = None
        if row is None and not create:
            raise _not_found(session, collection)
        if row is None:
            kind, index_kind, params = _create_table(session, collection, dim, opts)
        else:
            stored_dim, kind, index_kind, params = row[:4]
            if stored_dim != dim:
                raise DimensionMismatchError(
                    f"pgvector collection {collection!r} holds {stored_dim}-dimensional "
                    f"vectors, not {dim}; use the embedder that built it, or ingest into a "
                    "new collection"
                )
            _check_recorded(collection, kind, index_kind, params, opts, explicit)
        if kind == "halfvec" and version < (0, 7):
            raise ConfigError(
                f"halfvec needs pgvector 0.7 or later; {session.where} has {ext_version}"
            )
    return Layout(
        table=q.table_name(collection),
        kind=kind,
        index_kind=index_kind,
        m=int(params.get("m", q.DEFAULTS["m"])),
        ef_construction=int(params.get("ef_construction", q.DEFAULTS["ef_construction"])),
        lists=int(params.get("lists", 0)),
        pgvector=version,
    )


def drop_collection(session: Session, collection: str) -> None:
    conn = session.conn
    with conn.transaction():
        session.lock(f"ragkit:collection:{collection}")
        table = q.ident(q.SCHEMA, q.table_name(collection))
        conn.execute(_SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(
            _SQL("DELETE FROM {} WHERE name = %s").format(q.ident(q.SCHEMA, q.CATALOG)),
            [collection],
        )


def _extension(session: Session, collection: str, create: bool) -> tuple[str, str]:
    conn = session.conn
    row = conn.execute(_FIND_EXTENSION).fetchone()
    if row is not None:
        return row
    if not create:
        raise _not_found(session, collection)
    errors = session.psycopg.errors
    session.lock("ragkit:catalog")
    try:
        with conn.transaction():  # a savepoint, so that the error is ours to word
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except errors.InsufficientPrivilege as e:
        raise StoreError(
            f"pgvector: the user {conn.info.user!r} may not create the extension vector on "
            f"{session.where}: ask an administrator to run CREATE EXTENSION vector in "
            f"database {conn.info.dbname!r}"
        ) from e
    except (errors.FeatureNotSupported, errors.UndefinedFile, errors.UndefinedObject) as e:
        raise StoreError(
            f"pgvector: {session.where} has no pgvector extension "
            f"({session.scrub(str(e).strip())}): install pgvector on the server "
            "(https://github.com/pgvector/pgvector), or leave RAG_PG_DSN unset to use "
            "the embedded server"
        ) from e
    return conn.execute(_FIND_EXTENSION).fetchone()


def _not_found(session: Session, collection: str) -> CollectionNotFoundError:
    return CollectionNotFoundError(
        f"pgvector collection {collection!r} does not exist on {session.where}"
    )


def _check_recorded(
    collection: str,
    kind: str,
    index_kind: str,
    params: dict[str, Any],
    opts: dict[str, Any],
    explicit: set[str],
) -> None:
    """Options given explicitly must agree with those the collection was created with."""
    recorded = {"index": index_kind, **params}
    differ = [
        f"{key}={recorded[key]}"
        for key in q.BUILD_OPTIONS
        if key in explicit and key in recorded and opts[key] != recorded[key]
    ]
    half = opts["halfvec"]
    if "halfvec" in explicit and half != "auto" and (kind == "halfvec") != half:
        differ.append(f"halfvec={kind == 'halfvec'}")
    if differ:
        raise ConfigError(
            f"pgvector collection {collection!r} was created with {', '.join(differ)}; "
            "leave those options out, or drop the collection and ingest again"
        )


def _create_table(
    session: Session, collection: str, dim: int, opts: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    half = opts["halfvec"]
    kind = "halfvec" if half is True or (half == "auto" and dim > 2000) else "vector"
    index_kind = str(opts["index"])
    limit = q.HALFVEC_INDEX_MAX_DIM if kind == "halfvec" else q.VECTOR_INDEX_MAX_DIM
    if index_kind != "none" and dim > limit:
        raise ConfigError(
            f"pgvector indexes at most {limit} dimensions as {kind}, not {dim}: "
            + ("use halfvec=true (up to 4000), " if kind == "vector" else "")
            + "or index=none for exact search"
        )
    params = {key: opts[key] for key in ("m", "ef_construction", "lists")}
    table = q.table_name(collection)
    session.conn.execute(
        _SQL(
            "CREATE TABLE {} (id text PRIMARY KEY, text text NOT NULL, "
            "metadata jsonb NOT NULL, embedding {}({}) NOT NULL)"
        ).format(q.ident(q.SCHEMA, table), _SQL(kind), q.sql.Literal(dim))
    )
    session.conn.execute(
        _SQL(
            "INSERT INTO {} (name, table_name, dim, kind, index_kind, index_params) "
            "VALUES (%s, %s, %s, %s, %s, %s)"
        ).format(q.ident(q.SCHEMA, q.CATALOG)),
        [collection, table, dim, kind, index_kind, Jsonb(params)],
    )
    return kind, index_kind, params
