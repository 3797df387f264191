"""The gateway of ``rag serve`` against a real uvicorn server on loopback, with httpx as the
client: API keys and scopes (401/403), per-key rate limits (429), body sizes (413), the
bounded queue (503), the timeout (504), the bind check, the key store and ``rag keys``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.serve.errors import ApiError
from apps.serve.gateway import (
    KEYLESS,
    Caller,
    GatewayConfig,
    RateLimiter,
    TokenBucket,
    authenticate,
    check_bind,
    check_collection,
    install,
    is_loopback,
)
from apps.serve.keys import (
    KeyStore,
    UnknownKeyError,
    key_store_path,
    open_key_store,
    parse_token,
)
from rag.errors import ConfigError
from tests.serve_support import running

RAG = str(Path(sys.executable).parent / "rag")
#: Bounds every wait on the server.
WAIT = 15.0
Reader = Annotated[Caller, Depends(authenticate("read"))]
Ingester = Annotated[Caller, Depends(authenticate("ingest"))]


def make_app() -> FastAPI:
    """A tiny app with the endpoints the gateway guards, as ``rag serve``'s are written."""
    app = FastAPI()
    app.state.gate = threading.Event()
    app.state.running = 0
    app.state.most = 0
    lock = threading.Lock()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/v1/collections/{name}")
    def collection(name: str, caller: Reader) -> dict:
        check_collection(caller, name)
        return {"name": name, "key": caller.key_id}

    @app.post("/v1/echo")
    async def echo(request: Request, caller: Ingester) -> dict:
        return {"bytes": len(await request.body())}

    @app.post("/v1/collections/{name}/documents")
    async def upload(name: str, request: Request, caller: Ingester) -> dict:
        check_collection(caller, name)
        return {"bytes": len(await request.body())}

    @app.get("/slow")
    def slow(caller: Reader) -> dict:
        with lock:
            app.state.running += 1
            app.state.most = max(app.state.most, app.state.running)
        try:
            app.state.gate.wait(WAIT)
        finally:
            with lock:
                app.state.running -= 1
        return {"ok": True}

    @app.get("/sleep")
    async def sleep(seconds: float, caller: Reader) -> dict:
        await asyncio.sleep(min(seconds, WAIT))
        return {"slept": seconds}

    @app.get("/stream")
    async def stream(caller: Reader) -> StreamingResponse:
        async def chunks() -> Iterator[str]:  # type: ignore[misc]
            for i in range(4):
                yield str(i)
                await asyncio.sleep(0.25)

        return StreamingResponse(chunks(), media_type="text/plain")

    return app


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    return KeyStore(key_store_path(tmp_path_factory.mktemp("keys")))


@pytest.fixture(scope="module")
def tokens(store: KeyStore) -> dict[str, str]:
    out = {}
    _, out["reader"] = store.create("reader", scopes=["read"], collections=["docs"])
    _, out["writer"] = store.create("writer", scopes=["read", "ingest"])
    _, out["limited"] = store.create("limited", scopes=["read"], rate=2)
    info, out["revoked"] = store.create("revoked", scopes=["read", "ingest"])
    store.revoke(info.id)
    return out


@pytest.fixture(scope="module")
def server(store: KeyStore, tokens: dict[str, str]) -> Iterator[tuple[str, FastAPI]]:
    app = make_app()
    config = GatewayConfig(
        rate_per_minute=6000,
        burst=200,
        max_body_bytes=1024,
        max_upload_bytes=8192,
        max_in_flight=2,
        max_queued=2,
        timeout=WAIT,
    )
    install(app, config, store)
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server: tuple[str, FastAPI]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=WAIT) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body["error"]) == {"message", "type", "code"}
    return body["error"]


# --- keys and scopes ---------------------------------------------------------------------------


def test_health_needs_no_key(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"ok": True}


def test_a_missing_or_malformed_key_is_401(client: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        r = client.get("/v1/collections/docs", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert error_of(r)["code"] == "missing_api_key"


def test_a_wrong_or_revoked_key_is_401_and_not_echoed(
    client: httpx.Client, tokens: dict[str, str]
) -> None:
    key_id, _ = parse_token(tokens["writer"])
    wrong = [
        "not-a-token",
        f"rk-{key_id}-{'x' * 43}",  # a real id, a wrong secret
        "rk-000000000000-" + "y" * 43,  # an unknown id
        tokens["writer"] + "z",
        tokens["revoked"],
    ]
    for token in wrong:
        r = client.get("/v1/collections/docs", headers=bearer(token))
        assert r.status_code == 401, token
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert error_of(r)["code"] == "invalid_api_key"
        assert token not in r.text


def test_a_key_without_the_scope_is_403(client: httpx.Client, tokens: dict[str, str]) -> None:
    r = client.post("/v1/echo", content=b"{}", headers=bearer(tokens["reader"]))
    assert r.status_code == 403
    assert error_of(r)["code"] == "scope_not_allowed"
    ok = client.post("/v1/echo", content=b"{}", headers=bearer(tokens["writer"]))
    assert ok.json() == {"bytes": 2}


def test_a_key_sees_only_its_collections(client: httpx.Client, tokens: dict[str, str]) -> None:
    key_id, _ = parse_token(tokens["reader"])
    r = client.get("/v1/collections/docs", headers=bearer(tokens["reader"]))
    assert r.json() == {"name": "docs", "key": key_id}
    r = client.get("/v1/collections/other", headers=bearer(tokens["reader"]))
    assert r.status_code == 403
    assert error_of(r)["code"] == "collection_not_allowed"
    r = client.get("/v1/collections/other", headers=bearer(tokens["writer"]))
    assert r.status_code == 200


def test_a_key_revoked_while_serving_is_refused_at_once(
    client: httpx.Client, store: KeyStore
) -> None:
    info, token = store.create("short-lived")
    assert client.get("/v1/collections/docs", headers=bearer(token)).status_code == 200
    store.revoke(info.id)
    assert client.get("/v1/collections/docs", headers=bearer(token)).status_code == 401


# --- rate, size, queue, timeout -------------------------------------------------------------------


def test_over_its_rate_a_key_gets_429_with_retry_after(
    client: httpx.Client, tokens: dict[str, str]
) -> None:
    # 2 requests a minute: a bucket of 2, then one token every 30 s.
    statuses = [
        client.get("/v1/collections/docs", headers=bearer(tokens["limited"])) for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert error_of(statuses[2])["code"] == "rate_limit_exceeded"
    assert 1 <= int(statuses[2].headers["Retry-After"]) <= 30
    # Other keys keep their own buckets.
    assert client.get("/v1/collections/docs", headers=bearer(tokens["writer"])).status_code == 200


def test_keyless_callers_are_limited_by_address() -> None:
    app = make_app()
    install(app, GatewayConfig(rate_per_minute=2, burst=5), None)
    with running(app) as url, httpx.Client(base_url=url, timeout=WAIT) as c:
        statuses = [c.get("/v1/collections/any").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert c.get("/healthz").status_code == 200  # exempt
    assert app.state.keys is None


def test_an_oversized_body_is_413(client: httpx.Client, tokens: dict[str, str]) -> None:
    auth = bearer(tokens["writer"])
    r = client.post("/v1/echo", content=b"x" * 2000, headers=auth)
    assert r.status_code == 413
    assert error_of(r)["code"] == "body_too_large"
    assert client.post("/v1/echo", content=b"x" * 1000, headers=auth).json() == {"bytes": 1000}
    # Uploads have their own, larger limit.
    url = "/v1/collections/docs/documents"
    assert client.post(url, content=b"x" * 4000, headers=auth).json() == {"bytes": 4000}
    assert client.post(url, content=b"x" * 9000, headers=auth).status_code == 413


def test_an_oversized_chunked_body_is_413(server: tuple[str, FastAPI], tokens: dict) -> None:
    def chunks(n: int, size: int) -> Iterator[bytes]:
        for _ in range(n):
            yield b"y" * size

    auth = bearer(tokens["writer"])
    # A fresh connection each time: the gateway closes one whose body it left unread.
    with httpx.Client(base_url=server[0], timeout=WAIT) as c:
        r = c.post("/v1/echo", content=chunks(8, 512), headers=auth)
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.request.headers
        assert r.status_code == 413
        assert error_of(r)["code"] == "body_too_large"
    with httpx.Client(base_url=server[0], timeout=WAIT) as c:
        r = c.post("/v1/echo", content=chunks(4, 200), headers=auth)
        assert r.json() == {"bytes": 800}


def test_beyond_in_flight_and_queue_requests_are_shed_with_503(
    server: tuple[str, FastAPI], tokens: dict[str, str]
) -> None:
    url, app = server
    app.state.gate.clear()
    auth = bearer(tokens["writer"])
    with (
        httpx.Client(base_url=url, timeout=WAIT) as c,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        futures = [pool.submit(c.get, "/slow", headers=auth) for _ in range(8)]
        # 2 run and 2 wait while the gate is shut: the other 4 are answered meanwhile.
        deadline = time.monotonic() + WAIT
        while sum(f.done() for f in futures) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        shed = [f.result() for f in futures if f.done()]
        app.state.gate.set()
        served = [f.result(timeout=WAIT) for f in futures]
    assert [r.status_code for r in shed] == [503] * 4
    assert all(r.headers["Retry-After"] == "1" for r in shed)
    assert error_of(shed[0])["code"] == "overloaded"
    assert sorted(r.status_code for r in served) == [200] * 4 + [503] * 4
    assert app.state.most == 2


@pytest.fixture(scope="module")
def quick_app() -> Iterator[tuple[str, FastAPI]]:
    """A keyless server with a 0.5 s timeout and one request at a time."""
    app = make_app()
    install(app, GatewayConfig(rate_per_minute=None, max_in_flight=1, timeout=0.5), None)
    with running(app) as url:
        yield url, app


@pytest.fixture
def quick(quick_app: tuple[str, FastAPI]) -> str:
    return quick_app[0]


def test_a_slow_response_is_504_and_frees_its_slot(quick: str) -> None:
    with httpx.Client(base_url=quick, timeout=WAIT) as c:
        r = c.get("/sleep", params={"seconds": 10})
        assert r.status_code == 504
        assert error_of(r)["code"] == "timeout"
        # One slot only: the abandoned request gave it back.
        assert c.get("/sleep", params={"seconds": 0}).json() == {"slept": 0}


def test_a_timed_out_thread_keeps_its_slot_until_it_returns(
    quick_app: tuple[str, FastAPI],
) -> None:
    url, app = quick_app
    app.state.gate.clear()
    with httpx.Client(base_url=url, timeout=WAIT) as c:
        r = c.get("/slow")  # a plain function, in a worker thread: it cannot be stopped
        assert r.status_code == 504
        busy = c.get("/sleep", params={"seconds": 0})  # waits 0.5 s for the one slot
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        app.state.gate.set()
        statuses = []
        for _ in range(50):  # the slot comes back once the thread has returned
            statuses.append(c.get("/sleep", params={"seconds": 0}).status_code)
            if statuses[-1] == 200:
                break
            time.sleep(0.05)
        assert statuses[-1] == 200
        assert set(statuses) <= {200, 503}


def test_a_stream_outlives_the_timeout_once_started(quick: str) -> None:
    with httpx.Client(base_url=quick, timeout=WAIT) as c:
        r = c.get("/stream")  # 4 chunks over 1 s, with a 0.5 s timeout
        assert r.status_code == 200
        assert r.text == "0123"


# --- the token bucket --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=100),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=80),
)
def test_a_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now, times = 0.0, []
    for step in steps:
        now += step
        if bucket.take(now) == 0.0:
            times.append(now)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - start) + 1e-6


def test_the_wait_is_computed_from_the_bucket() -> None:
    clock = [100.0]
    limiter = RateLimiter(60, burst=1, clock=lambda: clock[0])
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(1.0)
    clock[0] += 0.25
    assert limiter.take("k") == pytest.approx(0.75)
    assert limiter.take("k", 6) == 0.0  # a key's own rate: a bucket of its own
    assert limiter.take("k", 6) == pytest.approx(10.0)
    assert RateLimiter(None, burst=1).take("k") == 0.0


def test_the_limiter_is_thread_safe() -> None:
    limiter = RateLimiter(6000, burst=30, clock=lambda: 0.0)  # time stands still
    admitted = []

    def hammer() -> None:
        admitted.append(sum(limiter.take("k") == 0.0 for _ in range(50)))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sum(admitted) == 30


def test_the_limiter_keeps_a_bounded_number_of_buckets() -> None:
    limiter = RateLimiter(60, burst=1, max_buckets=10, clock=lambda: 0.0)
    for i in range(100):
        limiter.take(f"10.0.0.{i}")
    assert len(limiter._buckets) == 10


def test_gateway_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        GatewayConfig(max_in_flight=0)
    with pytest.raises(ConfigError, match="rate_per_minute"):
        GatewayConfig(rate_per_minute=-1)


# --- the bind check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com", "", "10.0.0.1"])
def test_a_public_bind_needs_an_active_key(host: str, tmp_path: Path) -> None:
    assert not is_loopback(host)
    keys = KeyStore(tmp_path / "keys.sqlite")
    with pytest.raises(ConfigError, match="rag keys create"):
        check_bind(host, None)
    with pytest.raises(ConfigError, match="rag keys create"):
        check_bind(host, keys)  # no keys at all
    info, _ = keys.create("ops")
    check_bind(host, keys)
    keys.revoke(info.id)
    with pytest.raises(ConfigError, match="without API keys"):
        check_bind(host, keys)  # only revoked keys


# --- the key store -----------------------------------------------------------------------------


def test_the_store_keeps_only_a_hash(tmp_path: Path) -> None:
    path = key_store_path(tmp_path)
    store = KeyStore(path)
    assert store.list() == [] and not path.exists()
    info, token = store.create("ci", scopes=["ingest", "read"], collections=["a", "b"], rate=30)
    key_id, secret = parse_token(token)
    assert key_id == info.id and token.startswith(f"rk-{info.id}-")
    on_disk = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert secret.encode() not in on_disk
    assert token.encode() not in on_disk
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in on_disk  # looked right
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o077 == 0
    found = store.verify(token)
    assert found == info
    assert found.scopes == {"read", "ingest"} and found.collections == {"a", "b"}
    assert found.rate == 30
    assert store.verify(token[:-1]) is None
    assert store.verify("") is None
    assert store.verify("rk-" + "a" * 500) is None


def test_the_store_refuses_bad_keys_in_one_line(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.sqlite")
    with pytest.raises(ConfigError, match="unknown scope 'admin'"):
        store.create("x", scopes=["admin"])
    with pytest.raises(ConfigError, match="at least one scope"):
        store.create("x", scopes=[])
    with pytest.raises(ConfigError, match="name"):
        store.create("  ")
    with pytest.raises(ConfigError, match="--rate"):
        store.create("x", rate=0)
    with pytest.raises(UnknownKeyError, match="no API key has the id 'nope'"):
        store.revoke("nope")
    assert store.list() == []


def test_the_server_asks_for_keys_once_one_is_active(tmp_path: Path) -> None:
    assert open_key_store(tmp_path) is None
    info, _ = KeyStore(key_store_path(tmp_path)).create("first")
    keys = open_key_store(tmp_path)
    assert keys is not None and keys.path == key_store_path(tmp_path)
    keys.revoke(info.id)
    assert open_key_store(tmp_path) is None


def test_keyless_caller_sees_everything() -> None:
    assert KEYLESS.key_id is None and KEYLESS.may_see("anything")
    assert KEYLESS.scopes == {"read", "ingest"}


# --- rag keys ----------------------------------------------------------------------------------


def rag(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAG, "--data-dir", str(data_dir), "keys", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rag_keys_create_list_revoke(tmp_path: Path) -> None:
    made = rag(tmp_path, "create", "--name", "ci", "--scope", "read", "--scope", "ingest",
               "--collection", "docs", "--rate", "30")  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("rk-") and "\n" not in token  # the token alone on stdout
    assert "shown only this once" in made.stderr
    assert token not in made.stderr
    store = KeyStore(key_store_path(tmp_path))
    info = store.verify(token)
    assert info is not None and info.collections == {"docs"} and info.rate == 30

    listed = rag(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    keys = json.loads(listed.stdout)["keys"]
    assert [k["id"] for k in keys] == [info.id]
    assert keys[0]["scopes"] == ["ingest", "read"] and keys[0]["active"]
    _, secret = parse_token(token)
    assert secret not in listed.stdout and "hash" not in listed.stdout

    assert rag(tmp_path, "revoke", info.id).returncode == 0
    assert store.verify(token) is None
    listed = rag(tmp_path, "list")
    assert info.id in listed.stdout and "revoked" in listed.stdout

    unknown = rag(tmp_path, "revoke", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "rag: error: no API key has the id 'nope' (rag keys list shows them)"
    )
    bad = rag(tmp_path, "create", "--name", "x", "--scope", "admin")
    assert bad.returncode == 2 and "invalid choice: 'admin'" in bad.stderr


# --- logs --------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_no_token_reaches_the_logs(
    client: httpx.Client, tokens: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    handler = _Records()
    names = ["", "rag", "rag.serve", "uvicorn", "uvicorn.error", "uvicorn.access"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        reader_id, _ = parse_token(tokens["reader"])
        client.post("/v1/echo", content=b"{}", headers=bearer(tokens["reader"]))  # 403
        client.get("/v1/collections/docs", headers=bearer(tokens["reader"][:-2] + "AA"))  # 401
        client.get("/v1/collections/docs", headers=bearer(tokens["revoked"]))  # 401
        client.get("/v1/collections/docs", headers=bearer(tokens["writer"]))  # 200
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    out, err = capfd.readouterr()
    logged = "\n".join([*handler.lines, out, err])
    assert f"key {reader_id} lacks the ingest scope" in logged  # the capture works
    assert "GET /v1/collections/docs" in logged  # the access log too
    for token in tokens.values():
        _, secret = parse_token(token)
        assert secret[:12] not in logged
