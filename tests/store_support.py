"""Real store engines for tests: the session's store folder, the servers some stores need
(the embedded PostgreSQL for pgvector) started once per session, and the check that a
store's extra is installed (skipped where it is not, a failure when ``CI`` is set); and the
sample corpus ingested into a collection.

Servers reached by URL like remote ones (:data:`URL_SERVERS`): the embedded PostgreSQL on a
loopback TCP port with a password (:class:`TcpPostgres`) and ``chroma run`` on loopback
(:class:`ChromaServer`), each started once per session on first use, and stopped at its end.

A test module loads it as a plugin (``pytest_plugins = ["tests.store_support"]``, so that
every module shares one definition of each fixture, and one server) and asks for
``store_ready``, a function that readies a store by name and returns its folder, before
opening the store there. It has no assertions of its own (PYTEST_DONT_REWRITE), so a module
may also import it directly.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag import Collection, Settings, open_collection, plugins


def _embedded_postgres(root: Path) -> Callable[[], None]:
    """Start the embedded PostgreSQL for the session; returns its release."""
    from vectorstores.pgserver import acquire

    server = acquire(root)
    return server.stop


#: Servers started once per session for a store (when it is installed), so that each test's
#: close() does not release the last handle and the next test start it again:
#: ``{store: start(data_dir) -> release}``.
SESSION_SERVERS: dict[str, Callable[[Path], Callable[[], None]]] = {
    "pgvector": _embedded_postgres,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpPostgres:
    """The embedded PostgreSQL in ``folder`` listening on ``127.0.0.1:<free port>`` too,
    with a role and a database ``ragkit_remote`` whose password is in a passfile (0600):
    :meth:`start` returns a DSN that reaches it like a remote server, password-free."""

    ROLE = "ragkit_remote"

    def __init__(self, folder: Path) -> None:
        from vectorstores.pgserver import EmbeddedPostgres

        self.folder = folder
        self.port = free_port()
        self.server = EmbeddedPostgres(folder / "server", tcp_port=self.port)
        self.password = secrets.token_urlsafe(24)
        self.passfile = folder / "passfile"

    def start(self) -> str:
        import psycopg
        from psycopg import sql

        self.server.start()
        try:
            with psycopg.connect(self.server.dsn, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", [self.ROLE]
                ).fetchone()
                # The SCRAM verifier is computed here: the password never reaches the server.
                verifier = conn.pgconn.encrypt_password(
                    self.password.encode(), self.ROLE.encode(), b"scram-sha-256"
                ).decode()
                verb = "ALTER" if exists else "CREATE"
                conn.execute(
                    sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                        sql.Identifier(self.ROLE), sql.Literal(verifier)
                    )
                )
                if not exists:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(self.ROLE))
                    )
            # pgvector is not a trusted extension: the DBA installs it, as on a real server.
            local = f"{self.server.dsn.replace('dbname=postgres', '')} dbname={self.ROLE}"
            with psycopg.connect(local, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except BaseException:
            self.server.stop()
            raise
        self.passfile.write_text(f"127.0.0.1:{self.port}:{self.ROLE}:{self.ROLE}:{self.password}\n")
        self.passfile.chmod(0o600)
        return self.dsn(passfile=True)

    def dsn(self, *, passfile: bool) -> str:
        """The TCP DSN, with the passfile or with none (the password then comes from
        ``PGPASSWORD``)."""
        dsn = f"host=127.0.0.1 port={self.port} dbname={self.ROLE} user={self.ROLE}"
        return f"{dsn} passfile={self.passfile}" if passfile else dsn

    def stop(self) -> None:
        self.server.stop()


#: ``chroma run`` from the installed chromadb, whatever its console script is called.
_CHROMA_RUN = """
import sys
from chromadb.cli.cli import app
sys.argv = ["chroma", "run", "--path", sys.argv[1], "--host", "127.0.0.1", "--port", sys.argv[2]]
app()
"""
_START_TIMEOUT_S = 60.0


class ChromaServer:
    """``chroma run --path folder/data --host 127.0.0.1 --port <free port>``, our child."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHROMA_RUN, str(self.folder / "data"), str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=2):
                    return self.url
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"chroma run did not start on {self.url}: {log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the server goes away at once, mid-request or not."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _tcp_postgres(folder: Path) -> tuple[str, Callable[[], None]]:
    server = TcpPostgres(folder)
    return server.start(), server.stop


def _chroma_server(folder: Path) -> tuple[str, Callable[[], None]]:
    server = ChromaServer(folder)
    return server.start(), server.stop


#: Conformance variants whose store is reached by URL through a server started once per
#: session on first use: ``{param id: (store, start(folder) -> (url, release))}``.
URL_SERVERS: dict[str, tuple[str, Callable[[Path], tuple[str, Callable[[], None]]]]] = {
    "pgvector-tcp": ("pgvector", _tcp_postgres),
    "chroma-server": ("chroma", _chroma_server),
}


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One folder for the whole session, so that an embedded server starts once; each test
    # uses its own collection.
    return tmp_path_factory.mktemp("stores")


@pytest.fixture(scope="session")
def session_servers(store_root: Path) -> Iterator[dict[str, Callable[[], None]]]:
    """Releases of the servers started so far, by store; started on first use."""
    started: dict[str, Callable[[], None]] = {}
    try:
        yield started
    finally:
        for release in started.values():
            release()


@pytest.fixture(scope="session")
def server_urls() -> dict[str, str]:
    """The URLs of the :data:`URL_SERVERS` started so far, by param id."""
    return {}


def missing(store: str) -> str | None:
    """Why ``store`` cannot run here (its extra is not installed), or ``None``."""
    plugin = plugins.get("stores", store)
    absent = plugin.missing()
    if not absent:
        return None
    return f"{store}: {absent[0]} is not installed ({plugin.install_hint})"


@pytest.fixture
def store_ready(
    store_root: Path, session_servers: dict[str, Callable[[], None]]
) -> Callable[[str], Path]:
    """``ready(store)``: skips the test when ``store`` is not installed (fails in CI, which
    must run every store), starts its session server on first use, and returns the folder
    its server keeps (``store_root / store``)."""

    def ready(store: str) -> Path:
        require(store)
        if store in SESSION_SERVERS and store not in session_servers:
            session_servers[store] = SESSION_SERVERS[store](store_root / store)
        return store_root / store

    return ready


def require(store: str) -> None:
    """Skip the test when ``store`` is not installed (fail in CI, which runs every store)."""
    why = missing(store)
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI must run every store")
        pytest.skip(why)


@pytest.fixture
def store_url(
    store_root: Path,
    session_servers: dict[str, Callable[[], None]],
    server_urls: dict[str, str],
) -> Callable[[str], str]:
    """``url(variant)``: the URL of the session's server for a :data:`URL_SERVERS` variant,
    started on first use (skips the test when its store is not installed)."""

    def url(variant: str) -> str:
        store, start = URL_SERVERS[variant]
        require(store)
        if variant not in server_urls:
            server_urls[variant], session_servers[variant] = start(store_root / f"{variant}.server")
        return server_urls[variant]

    return url


@pytest.fixture
def data_dir(tmp_path: Path, store_root: Path) -> Path:
    """A fresh ragkit data directory whose stores live in the session's store folder (its
    ``stores`` is a link there), so that a collection or a store opened through it is
    served by the session's servers rather than starting its own."""
    folder = tmp_path / "rag"
    folder.mkdir()
    (folder / "stores").symlink_to(store_root, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def sample_collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    """data/ (the sample corpus) ingested into a FAISS collection with the hashing embedder,
    as `rag ingest data` does."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("rag"),
        collection="docs",
        embed_model="hashing-384",
        embed_backend="hashing",
    )
    data = Path(__file__).resolve().parent.parent / "data"
    with open_collection(settings, create=True) as col:
        col.ingest([data])
        yield col
