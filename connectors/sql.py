"""The SQL connector: the rows of a query as documents, through SQLAlchemy.

``rag ingest sql --url env:SHOP_DB --query "SELECT * FROM articles" --text-columns title,body
--metadata-columns author,lang --updated-column updated_at``: each row the query returns is
one document, its text the text columns (in the order given, blank ones left out) joined by a
blank line, its metadata the metadata columns (dates as ISO 8601 strings; a column named
``title`` becomes the title, else the first line of the text does).

The database URL is a SQLAlchemy URL (``sqlite:////path/shop.db``,
``postgresql+psycopg://reader@db.internal/shop``). It never carries a password on the command
line: write ``--url env:NAME`` to read the whole URL from the environment variable ``NAME``,
or leave the password out and let the driver find it (PostgreSQL: ``PGPASSWORD``,
``~/.pgpass``, or ``?passfile=...`` in the URL). The URL is never printed, logged or stored:
messages show it with the password as ``***``, and the collection records only the target
``sql``. The query runs in a read-only transaction on SQLite and PostgreSQL.

Item ids are ``sql:<database>/<rowset>:<id>``: the database's name (a SQLite file's name),
the row set (the ``name`` option; else the table of a query that reads one table,
``SELECT ... FROM articles [WHERE ...]``; else ``query-`` and a hash of the query), and the
row's id. Editing a query that has no table name changes its row set, so give such a query a
``name`` to keep its ids (and have rows it no longer returns removed).

Incremental: a scan reads the id and, with ``updated_column``, that column only; otherwise
the text and metadata columns, hashed. That value (with the columns chosen) is the item's
change token, so an unchanged row is never read again; changed rows are read back in batches
of :data:`BATCH` by id; rows the query no longer returns are deleted by the ingest's cleanup.
A row whose id is empty or repeated is reported, not read.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from connectors.filesystem import human_size
from connectors.parsers import clean_text
from rag.contract import INT_MAX, INT_MIN, check_metadata, key_problem
from rag.errors import (
    ConfigError,
    IngestError,
    MetadataError,
    MissingDependencyError,
    NothingToIndex,
)
from rag.source import SourceItem, SourceOptions
from rag.types import Document, Failure, Skipped

if TYPE_CHECKING:
    import sqlalchemy as sa

#: Rows read back per query when the changed rows are loaded.
BATCH = 256
#: Fields the connector writes itself; a metadata column may not take their names.
RESERVED = frozenset({"source", "content_hash", "size", "row_id", "rowset", "database"})
_TITLE_CHARS = 120
#: Query parameters of a URL that hold a password (libpq reads ``?password=``).
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd"})
_IDENT = r'(?:[A-Za-z_][\w$]*|"[^"]+")'
_SIMPLE_QUERY = re.compile(
    rf"\s*select\s+.+?\s+from\s+({_IDENT}(?:\.{_IDENT})?)\s*(?:(?:where|order\s+by|limit)\b.*)?",
    re.I | re.S,
)


def _hash13(text: str) -> float:
    """A change token: the first 13 hex digits of a sha256 (52 bits, exact in a float)."""
    return float(int(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:13], 16))


def _columns(options: SourceOptions, name: str) -> list[str]:
    value = options.param(name) or ""
    return [c.strip() for c in value.split(",") if c.strip()]


def _plain(value: Any) -> Any:
    """A column value as JSON and metadata keep it (``None`` stays ``None``)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if INT_MIN <= value <= INT_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


class SqlSource:
    """The rows of a SQL query (see the module docstring). The ``sql`` source plugin; its
    one target is ``sql``."""

    name: ClassVar[str] = "sql"
    description: ClassVar[str] = "SQL databases (SQLAlchemy URLs): the rows of a query"
    options: ClassVar[dict[str, str]] = {
        "url": "the database's SQLAlchemy URL without a password, or env:NAME to read it from "
        "the environment variable NAME",
        "query": "the SELECT whose rows become documents",
        "id_column": "the column that identifies a row (default id)",
        "text_columns": "the columns that make a row's text, comma-separated",
        "metadata_columns": "the columns kept as metadata, comma-separated",
        "updated_column": "a column that changes whenever the row does (a timestamp or "
        "version); without it, a hash of each row tells what changed",
        "name": "the row set's name in item ids (default: the table the query reads, else a "
        "hash of the query)",
    }

    @classmethod
    def claims(cls, target: str) -> bool:
        return target == "sql"

    def __init__(self, options: SourceOptions) -> None:
        if list(options.targets) != ["sql"]:
            raise ConfigError("the sql source reads one target, sql: rag ingest sql --url ...")
        self.options = options
        self._url = self._read_url(options.param("url"))
        query = (options.param("query") or "").strip().rstrip(";").strip()
        if not query:
            raise ConfigError("the sql source needs --query: the SELECT whose rows to ingest")
        self._query = query
        self._id = (options.param("id_column") or "id").strip()
        self._text = _columns(options, "text_columns")
        if not self._text:
            raise ConfigError("the sql source needs --text-columns: the columns to index")
        self._meta = _columns(options, "metadata_columns")
        self._updated = (options.param("updated_column") or "").strip() or None
        for column in self._meta:
            problem = key_problem(column)
            if problem:
                raise ConfigError(
                    f"metadata column {column!r} cannot be a metadata field: {problem}"
                )
            if column in RESERVED:
                raise ConfigError(
                    f"metadata column {column!r} would replace ragkit's own field; rename it in "
                    f"the query (SELECT ... {column} AS {column}_, ...)"
                )
        if options.include or options.exclude:
            raise ConfigError("the sql source takes no --include/--exclude: select rows in --query")
        name = (options.param("name") or "").strip() or self._default_name()
        if ":" in name or "/" in name:
            raise ConfigError(f"the row set name {name!r} may not hold ':' or '/'")
        database = self._url.database or self._url.get_backend_name()
        self._database = os.path.basename(database.rstrip("/")) or database
        self._prefix = f"sql:{self._database}/{name}:"
        self._rowset = name
        self._engine: sa.Engine | None = None
        # Filled by a scan: ids in order, each id's value as the database returned it.
        self._order: list[str] = []
        self._position: dict[str, int] = {}
        self._raw: dict[str, Any] = {}
        self._tokens: dict[str, tuple[int, float]] = {}
        self._window: dict[str, Any] = {}

    def _default_name(self) -> str:
        match = _SIMPLE_QUERY.fullmatch(self._query)
        if match:
            return match.group(1).replace('"', "")
        normal = " ".join(self._query.split())
        return "query-" + hashlib.sha256(normal.encode("utf-8", "surrogatepass")).hexdigest()[:10]

    # --- the URL ---------------------------------------------------------------------------

    def _read_url(self, given: str | None) -> sa.URL:
        try:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError
        except ImportError as e:
            raise MissingDependencyError("the sql source", "sqlalchemy", "sql") from e
        if not given:
            raise ConfigError("the sql source needs --url: the database's SQLAlchemy URL")
        from_env = given.startswith("env:")
        text = given
        if from_env:
            var = given[4:].strip()
            text = os.environ.get(var, "")
            if not text:
                raise ConfigError(f"--url env:{var}: the environment variable {var} is not set")
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            where = f"the environment variable {given[4:].strip()}" if from_env else "--url"
            raise ConfigError(
                f"{where} is not a SQLAlchemy URL (dialect://user@host/database)"
            ) from None
        secret_params = any(k.lower() in _SECRET_PARAMS for k in url.query)
        if (url.password is not None or secret_params) and not from_env:
            raise ConfigError(
                "--url holds a password, which the process list and the shell's history "
                "would show: put the URL in an environment variable and give --url env:NAME, "
                "or leave the password out for the driver to find (PGPASSWORD, ~/.pgpass)"
            )
        if url.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2
            import importlib.util

            if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
                url = url.set(drivername="postgresql+psycopg")
        return url

    def _secrets(self) -> list[str]:
        found = [str(self._url.password)] if self._url.password else []
        for key, value in self._url.query.items():
            if key.lower() in _SECRET_PARAMS:
                found += [value] if isinstance(value, str) else list(value)
        return [s for s in found if s]

    @property
    def shown_url(self) -> str:
        """The URL with its password (in the user part or the query) as ``***``."""
        query = {k: "***" if k.lower() in _SECRET_PARAMS else v for k, v in self._url.query.items()}
        shown = self._url.set(query=query).render_as_string(hide_password=True)
        return shown.replace("=%2A%2A%2A", "=***")

    def _scrub(self, message: str) -> str:
        """The first line of a driver's message, any password in it as ``***``."""
        for secret in self._secrets():
            message = message.replace(secret, "***")
        return message.splitlines()[0] if message else message

    def _db_error(self, what: str, error: Exception) -> IngestError:
        from sqlalchemy.exc import DBAPIError

        detail = error.orig if isinstance(error, DBAPIError) and error.orig else error
        return IngestError(f"{what} ({self.shown_url}): {self._scrub(str(detail)).strip()}")

    # --- running queries -------------------------------------------------------------------

    def _connect(self) -> Any:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            try:
                self._engine = sa.create_engine(self._url, poolclass=NullPool, hide_parameters=True)
            except ImportError as e:
                raise ConfigError(
                    f"the driver of {self._url.drivername} is not installed ({e.name})"
                ) from None
            except Exception as e:
                raise self._db_error("could not use the database", e) from None
        try:
            conn = self._engine.connect()
        except Exception as e:
            raise self._db_error("could not connect to the database", e) from None
        dialect = self._engine.dialect.name
        try:
            if dialect == "sqlite":
                conn.exec_driver_sql("PRAGMA query_only = ON")
            elif dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        except Exception:
            conn.close()
            raise
        return conn

    def _rows(self, columns: Sequence[str]) -> Any:
        """The query as a subquery with ``columns``."""
        import sqlalchemy as sa

        return sa.text(self._query).columns(*(sa.column(c) for c in columns)).subquery("rag_rows")

    def _check_columns(self, conn: Any) -> None:
        import sqlalchemy as sa

        try:
            probe = conn.execute(sa.text(f"SELECT * FROM ({self._query}) AS rag_rows WHERE 1 = 0"))
            returned = list(probe.keys())
            probe.close()
        except Exception as e:
            raise self._db_error("the query failed", e) from None
        wanted = [self._id, *self._text, *self._meta, *([self._updated] if self._updated else [])]
        missing = [c for c in dict.fromkeys(wanted) if c not in returned]
        if missing:
            raise ConfigError(
                f"the query returns no column {', '.join(map(repr, missing))} (it returns "
                f"{', '.join(returned) or 'none'})"
            )

    # --- the contract ----------------------------------------------------------------------

    def scan(self) -> Iterator[SourceItem | Failure | Skipped]:
        import sqlalchemy as sa

        self._order, self._position, self._raw, self._tokens = [], {}, {}, {}
        self._window = {}
        content = [*self._text, *self._meta]
        watched = [self._updated] if self._updated else content
        # The columns chosen are part of the token: choosing others reads every row again.
        config = json.dumps([self._text, self._meta, self._updated])
        empty = 0
        with self._connect() as conn:
            self._check_columns(conn)
            rows = self._rows([self._id, *dict.fromkeys(watched)])
            stmt = sa.select(rows.c[self._id], *(rows.c[c] for c in dict.fromkeys(watched)))
            try:
                result = conn.execution_options(stream_results=True, yield_per=1000).execute(stmt)
                for row in result:
                    raw = row[0]
                    if raw is None:
                        empty += 1
                        continue
                    ident = self._prefix + str(_plain(raw))
                    if ident in self._position:
                        yield Failure(
                            ident, f"another row has the same {self._id}: only the first is read"
                        )
                        continue
                    values = json.dumps([_plain(v) for v in row[1:]], ensure_ascii=False)
                    size = 0 if self._updated else len(values.encode("utf-8", "surrogatepass"))
                    self._position[ident] = len(self._order)
                    self._order.append(ident)
                    self._raw[ident] = raw
                    self._tokens[ident] = (size, _hash13(config + values))
                    yield SourceItem(ident, size, self._tokens[ident][1])
            except Exception as e:
                raise self._db_error("the query failed", e) from None
        if empty:
            yield Failure(
                self._prefix + "?",
                f"{empty} row(s) have no {self._id}: a row needs an id to be tracked",
            )

    def load(self, item: SourceItem) -> list[Document]:
        row = self._row(item.id)
        if row is None:
            raise IngestError("the query no longer returns this row")
        parts = [clean_text(str(_plain(row[c]))) for c in self._text if row[c] is not None]
        text = "\n\n".join(p.strip() for p in parts if p.strip())
        if not text:
            raise NothingToIndex(f"no text in {', '.join(self._text)}")
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > self.options.max_bytes:
            limit = human_size(self.options.max_bytes)
            raise IngestError(f"larger than the {limit} limit ({human_size(size)})")
        meta = {c: _plain(row[c]) for c in self._meta}
        title = meta.pop("title", None)
        if title is None:
            title = text.split("\n", 1)[0].strip()[:_TITLE_CHARS]
        common = {
            "source": item.id,
            "title": str(title),
            "database": self._database,
            "rowset": self._rowset,
            "row_id": str(_plain(self._raw.get(item.id, row[self._id]))),
            "file_type": "sql",
            **meta,
            "content_hash": hashlib.sha256(
                json.dumps([text, meta], ensure_ascii=False, sort_keys=True).encode(
                    "utf-8", "surrogatepass"
                )
            ).hexdigest(),
            "size": size,
        }
        try:
            metadata = check_metadata(common)
        except MetadataError as e:
            raise IngestError(f"unusable metadata: {e}") from e
        return [Document(source=item.id, text=text, metadata=metadata, format="text")]

    def _row(self, ident: str) -> Any:
        """The row ``ident``, read with the next rows of the scan (one query per batch)."""
        if ident in self._window:
            return self._window.pop(ident)
        pos = self._position.get(ident)
        if pos is None:
            return None
        import sqlalchemy as sa

        batch = self._order[pos : pos + BATCH]
        columns = list(dict.fromkeys([self._id, *self._text, *self._meta]))
        rows = self._rows(columns)
        stmt = sa.select(*(rows.c[c] for c in columns)).where(
            rows.c[self._id].in_([self._raw[i] for i in batch])
        )
        with self._connect() as conn:
            try:
                found = conn.execute(stmt).mappings().all()
            except Exception as e:
                raise self._db_error("could not read the rows", e) from None
        self._window = {}
        for row in found:
            key = self._prefix + str(_plain(row[self._id]))
            self._window.setdefault(key, row)
        return self._window.pop(ident, None)

    def covers(self, source_id: str) -> bool:
        return source_id.startswith(self._prefix)

    def locate(self, source_id: str) -> SourceItem | None:
        token = self._tokens.get(source_id)
        return None if token is None else SourceItem(source_id, token[0], token[1])
