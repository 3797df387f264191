"""Stores on servers that go away: PostgreSQL over TCP with a password, and ``chroma run``.

Each test starts a server of its own (so the session's servers, used by the conformance
suite, survive), stops or kills it, and checks that the store says which server cannot be
reached, never with a password, and within a bounded time (a search runs in a thread that
must end); and that the retry policy retries what is transient, and only that.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag.errors import StoreError
from rag.store import StoreConfig
from tests.store_support import ChromaServer, TcpPostgres, free_port, require
from vectorstores.conformance import StoreEnv, dataset
from vectorstores.retry import Backoff, Unreachable, retry

pytest_plugins = ["tests.store_support"]

_JOIN_S = 90  # far past the retry budget (10 s) plus one attempt's timeouts


@pytest.fixture
def tcp_pg(tmp_path: Path) -> Iterator[TcpPostgres]:
    require("pgvector")
    server = TcpPostgres(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def chroma_srv(tmp_path: Path) -> Iterator[ChromaServer]:
    require("chroma")
    server = ChromaServer(tmp_path / "chroma")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _searches_until_error(store: object, started: threading.Event) -> tuple[threading.Thread, list]:
    """A thread searching ``store`` until a search fails (at most 100,000 searches);
    ``started`` is set after the first few succeed. Returns the thread and its outcome."""
    outcome: list = []
    q = dataset(n=1)[1][0]

    def loop() -> None:
        for i in range(100_000):
            try:
                store.search(q, k=5)  # type: ignore[attr-defined]
            except Exception as e:
                outcome.append(e)
                return
            if i == 3:
                started.set()
        outcome.append("no error")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, outcome


def _goes_away_mid_search(store: object, take_down: Callable[[], None]) -> StoreError:
    started = threading.Event()
    thread, outcome = _searches_until_error(store, started)
    assert started.wait(60), outcome
    take_down()
    thread.join(_JOIN_S)
    assert not thread.is_alive(), "the search hung after the server went away"
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError), outcome
    return outcome[0]


# --- PostgreSQL over TCP ---------------------------------------------------------------------


def test_pgvector_over_tcp_takes_the_password_from_the_environment(
    tcp_pg: TcpPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = StoreConfig(tmp_path / "data", url=tcp_pg.dsn(passfile=False))
    monkeypatch.setenv("PGPASSWORD", "not-" + tcp_pg.password)
    with pytest.raises(StoreError) as info:
        StoreEnv("pgvector", config).open()
    message = str(info.value)
    assert f"127.0.0.1:{tcp_pg.port}" in message and "password authentication failed" in message
    assert "cannot be reached" not in message  # a refused login is not retried
    assert tcp_pg.password not in message
    monkeypatch.setenv("PGPASSWORD", tcp_pg.password)
    store = StoreEnv("pgvector", config).open()
    try:
        store.upsert(*dataset(n=10))
        assert store.count() == 10
        assert store._session.conn.info.host == "127.0.0.1"
    finally:
        store.close()


def test_pgvector_server_gone_mid_search_is_a_clear_error(
    tcp_pg: TcpPostgres, tmp_path: Path
) -> None:
    url = tcp_pg.dsn(passfile=True)
    store = StoreEnv("pgvector", StoreConfig(tmp_path / "data", url=url)).open()
    try:
        store.upsert(*dataset())
        error = _goes_away_mid_search(store, tcp_pg.stop)
        message = str(error)
        assert f"PostgreSQL at 127.0.0.1:{tcp_pg.port}" in message, message
        assert "cannot be reached" in message and "attempt(s)" in message, message
        assert tcp_pg.password not in message
        # Back again: the same store reconnects.
        tcp_pg.start()
        assert len(store.search(dataset(n=1)[1][0], k=5)) == 5
    finally:
        store.close()


def test_pgvector_server_down_at_open(tmp_path: Path) -> None:
    require("pgvector")
    port = free_port()  # nothing listens there
    url = f"host=127.0.0.1 port={port} dbname=x user=x password=s3cret-pw connect_timeout=2"
    with pytest.raises(StoreError) as info:
        StoreEnv("pgvector", StoreConfig(tmp_path, url=url)).open()
    message = str(info.value)
    assert f"PostgreSQL at 127.0.0.1:{port}" in message and "cannot be reached" in message
    assert "5 attempt(s)" in message and "s3cret-pw" not in message


# --- chroma run ------------------------------------------------------------------------------


def test_chroma_server_gone_mid_search_is_a_clear_error(
    chroma_srv: ChromaServer, tmp_path: Path
) -> None:
    store = StoreEnv("chroma", StoreConfig(tmp_path / "data", url=chroma_srv.url)).open()
    try:
        store.upsert(*dataset())
        error = _goes_away_mid_search(store, chroma_srv.kill)
        message = str(error)
        assert f"the Chroma server at {chroma_srv.url} cannot be reached" in message, message
        assert "attempt(s)" in message
        # Back again on the same folder and port: the same store carries on.
        chroma_srv.start()
        assert len(store.search(dataset(n=1)[1][0], k=5)) == 5
    finally:
        store.close()


def test_chroma_server_that_stops_answering_times_out(
    chroma_srv: ChromaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server process frozen (SIGSTOP) still has its connections accepted by the kernel:
    only the client's response timeout ends the wait."""
    from vectorstores import chroma_server

    monkeypatch.setattr(chroma_server, "RESPONSE_TIMEOUT_S", 1.0)
    store = StoreEnv("chroma", StoreConfig(tmp_path / "data", url=chroma_srv.url)).open()
    assert chroma_srv.proc is not None
    pid = chroma_srv.proc.pid
    try:
        store.upsert(*dataset(n=20))
        error = _goes_away_mid_search(store, lambda: os.kill(pid, signal.SIGSTOP))
        assert "cannot be reached" in str(error) and "ReadTimeout" in str(error), error
    finally:
        os.kill(pid, signal.SIGCONT)
        store.close()


def test_chroma_server_down_at_open(tmp_path: Path) -> None:
    require("chroma")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreError) as info:
        StoreEnv("chroma", StoreConfig(tmp_path, url=url)).open()
    assert f"the Chroma server at {url} cannot be reached" in str(info.value)
    assert "5 attempt(s)" in str(info.value)


def test_chroma_transient_errors() -> None:
    require("chroma")
    import httpx
    from chromadb.errors import InternalError, NotFoundError

    from vectorstores.chroma_server import transient

    request = httpx.Request("GET", "http://127.0.0.1:1/api/v2/heartbeat")

    def status(code: int) -> httpx.HTTPStatusError:
        return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code))

    assert transient(httpx.ConnectError("refused", request=request))
    assert transient(httpx.ReadTimeout("slow", request=request))
    assert transient(status(503)) and transient(status(500)) and transient(InternalError("x"))
    assert not transient(status(404)) and not transient(status(400))
    assert not transient(NotFoundError("x")) and not transient(ValueError("x"))


# --- the retry policy ------------------------------------------------------------------------


def test_retry_backs_off_then_succeeds() -> None:
    slept: list[float] = []
    calls = iter([ConnectionResetError("1"), ConnectionResetError("2"), "done"])

    def work() -> str:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    out = retry(work, transient=lambda e: isinstance(e, OSError), what="t", sleep=slept.append)
    assert out == "done" and slept == [0.2, 0.4]


def test_retry_never_retries_other_errors() -> None:
    calls = []

    def work() -> None:
        calls.append(1)
        raise ValueError("a programming error")

    with pytest.raises(ValueError):
        retry(work, transient=lambda e: isinstance(e, OSError), what="t", sleep=lambda s: None)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("policy", "tries", "slept"),
    [
        (Backoff(attempts=4, base=0.5, cap=1.0, budget=60), 4, [0.5, 1.0, 1.0]),
        (Backoff(attempts=9, base=1.0, cap=8.0, budget=2.5), 2, [1.0]),  # 1 + 2 > 2.5
    ],
)
def test_retry_is_bounded(policy: Backoff, tries: int, slept: list[float]) -> None:
    waits: list[float] = []
    now = [0.0]

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    def work() -> None:
        raise ConnectionRefusedError("down")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vectorstores.retry.time.monotonic", lambda: now[0])
        with pytest.raises(Unreachable) as info:
            retry(work, transient=lambda e: True, what="t", policy=policy, sleep=sleep)
    assert info.value.attempts == tries and waits == slept
    assert isinstance(info.value.error, ConnectionRefusedError)


def test_pgvector_transient_errors_are_only_lost_connections(tcp_pg: TcpPostgres) -> None:
    import psycopg

    from vectorstores.pg_catalog import Session

    session = Session(tcp_pg.dsn(passfile=True), "here", "label")
    session.connect()
    try:
        assert not session.transient(psycopg.errors.UndefinedTable("no such table"))
        assert not session.transient(psycopg.errors.QueryCanceled("statement timeout"))
        with pytest.raises(psycopg.Error) as info:
            session.conn.execute("SELECT * FROM no_such_table")
        assert not session.transient(info.value)
        with pytest.raises(psycopg.OperationalError) as info:  # the server ends our backend
            session.conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert session.transient(info.value)
    finally:
        session.close()
    tcp_pg.stop()
    with pytest.raises(psycopg.OperationalError) as info:
        session.connect()
    assert session.transient(info.value)  # connection refused
