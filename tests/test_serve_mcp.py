"""``rag mcp`` and the MCP tools, through real MCP client sessions: over stdio (the process
an MCP client's configuration runs), over streamable HTTP on a FastAPI app of the test's own
(served by uvicorn on loopback), and in memory for the argument errors. Nothing is mocked:
the collections are built with the hashing embedder and answered by the extractive
generator."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")
pytest.importorskip("fastapi")

import httpx
import httpx2
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from apps.serve.mcp_server import build_mcp, mcp_http_app, mount_mcp
from apps.serve.service import Service
from rag import open_collection
from tests.serve_support import hashing_settings as settings
from tests.serve_support import running

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
QUERY = "how are chunks cut from a Markdown file"
QUESTION = "What is the default chunk size?"
TOOLS = {"search", "ask", "list_collections", "get_chunk"}
#: Every wait in this file is bounded by this many seconds.
LIMIT = 60


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two collections: ``docs`` (the repository's data/ folder) and ``notes`` (one file)."""
    root = tmp_path_factory.mktemp("mcp")
    notes = root / "notes"
    notes.mkdir()
    (notes / "llamas.md").write_text(
        "# Llamas\n\nLlamas live in the Andes mountains and eat grass all day long.\n"
    )
    with open_collection(settings(root / "rag", collection="docs"), create=True) as col:
        col.ingest([DATA])
    with open_collection(settings(root / "rag", collection="notes"), create=True) as col:
        col.ingest([notes])
    return root / "rag"


def expected_hits(data_dir: Path, query: str, **kw: Any) -> list[dict]:
    """What ``Collection.search`` returns, as JSON (what crossed the wire)."""
    with open_collection(settings(data_dir, collection=kw.pop("collection", "docs"))) as col:
        return json.loads(json.dumps([h.to_json() for h in col.search(query, **kw)]))


def data(result: CallToolResult) -> dict:
    """A successful call's structured content, checked against its text twin."""
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


def error(result: CallToolResult) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(LIMIT):
            return await fn()

    return anyio.run(bounded)


def rag_command() -> tuple[str, list[str]]:
    script = Path(sys.executable).with_name("rag")
    return (str(script), []) if script.exists() else (sys.executable, ["-m", "apps.cli"])


# --- stdio: the rag mcp process ----------------------------------------------------------------


def test_rag_mcp_over_stdio(data_dir: Path, tmp_path: Path) -> None:
    hits = expected_hits(data_dir, QUERY, k=3)
    command, prefix = rag_command()
    params = StdioServerParameters(
        command=command,
        args=[
            *prefix,
            "--data-dir",
            str(data_dir),
            "mcp",
            "-c",
            "docs",
            "--generator",
            "extractive",
        ],
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        cwd=ROOT,
    )

    async def session() -> None:
        with (tmp_path / "stderr.txt").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (r, w), ClientSession(r, w) as s:
                init = await s.initialize()
                assert init.server_info.name == "ragkit"
                tools = {t.name: t for t in (await s.list_tools()).tools}
                assert set(tools) == TOOLS
                for tool in tools.values():
                    assert tool.annotations is not None and tool.annotations.read_only_hint
                    assert tool.output_schema is not None and tool.description

                found = data(await s.call_tool("search", {"query": QUERY, "k": 3}))
                assert found == {"query": QUERY, "hits": hits}

                answer = data(await s.call_tool("ask", {"question": QUESTION}))
                assert "200 tokens [1]" in answer["answer"]
                assert answer["citations"] == [1] and answer["grounding"] == "grounded"
                assert answer["generator"] == "extractive" and answer["collection"] == "ragkit/docs"
                assert "200" in answer["sources"][0]["text"]

                chunk = data(await s.call_tool("get_chunk", {"id": hits[0]["id"]}))
                assert chunk["text"] == hits[0]["text"] and chunk["source"] == hits[0]["source"]
                assert chunk["metadata"] == hits[0]["metadata"]

                other = data(
                    await s.call_tool("search", {"query": "llamas", "collection": "notes"})
                )
                assert other["hits"][0]["source"].endswith("llamas.md")

                message = error(await s.call_tool("search", {"query": QUERY, "collection": "nope"}))
                assert "no collection 'nope'" in message and "ragkit/docs, ragkit/notes" in message

    run(session)
    # A tool error is the caller's mistake, not a crash: nothing logged at the default level.
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


def test_rag_mcp_refuses_an_unknown_collection_before_serving(data_dir: Path) -> None:
    command, prefix = rag_command()
    done = subprocess.run(
        [command, *prefix, "--data-dir", str(data_dir), "mcp", "--collection", "nope"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LIMIT,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stdout == ""  # stdout is the protocol's, even for an error
    assert "no collection 'nope'" in done.stderr and "ragkit/docs" in done.stderr


# --- streamable HTTP ---------------------------------------------------------------------------


async def http_session(
    url: str, check: Callable[[ClientSession], Awaitable[None]], headers: dict | None = None
) -> None:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=LIMIT) as client,
        streamable_http_client(url, http_client=client) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        await check(s)


def test_http_mounted_on_a_fastapi_app(data_dir: Path) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict]:
        events.append("up")
        yield {"marker": "the app's own state"}
        events.append("down")

    class Refused(Exception):
        pass

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc)}}, status_code=403)

    @app.get("/health")
    def health(request: Request) -> dict:
        return {"ok": True, "marker": request.state.marker}

    async def caller(request: Request) -> None:
        if "x-refuse" in request.headers:
            raise Refused("refused by the app's own check")
        return None  # every collection

    hits = expected_hits(data_dir, QUERY)
    service = Service(settings(data_dir))
    mount_mcp(app, service, default_collection="ragkit/docs", caller=caller)

    async def check(s: ClientSession) -> None:
        assert {t.name for t in (await s.list_tools()).tools} == TOOLS
        assert data(await s.call_tool("search", {"query": QUERY})) == {"query": QUERY, "hits": hits}
        listed = data(await s.call_tool("list_collections", {}))
        assert listed["default"] == "ragkit/docs" and len(listed["collections"]) == 2

    try:
        with running(app) as url:
            run(lambda: http_session(url + "/mcp", check))
            health = httpx.get(url + "/health", timeout=LIMIT).json()
            assert health == {"ok": True, "marker": "the app's own state"}
            assert events == ["up"]  # the app's lifespan runs inside the MCP one
            # The caller check answers through the app's own exception handlers.
            refused_call = httpx.post(
                url + "/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Accept": "application/json, text/event-stream", "X-Refuse": "1"},
                timeout=LIMIT,
            )
            assert refused_call.status_code == 403
            assert refused_call.json() == {"error": {"message": "refused by the app's own check"}}
    finally:
        service.close()
    assert events == ["up", "down"]


class Key:
    """What a gateway's caller check returns: the collections a key may use."""

    def __init__(self, collections: set[str]) -> None:
        self.collections = collections

    def may_see(self, name: str) -> bool:
        return name in self.collections


def test_http_caller_check_refuses_and_limits_the_collections(data_dir: Path) -> None:
    from starlette.exceptions import HTTPException

    def caller(request: Any) -> Key:
        if request.headers.get("authorization") != "Bearer notes-only":
            raise HTTPException(401, "a valid API key is required")
        return Key({"notes"})

    service = Service(settings(data_dir))
    app = mcp_http_app(service, caller=caller)

    async def check(s: ClientSession) -> None:
        listed = data(await s.call_tool("list_collections", {}))
        assert [c["id"] for c in listed["collections"]] == ["ragkit/notes"]
        assert listed["default"] == "ragkit/notes"  # the only one this key may use
        found = data(await s.call_tool("search", {"query": "what do llamas eat"}))
        assert found["hits"] and all(h["source"].endswith("llamas.md") for h in found["hits"])
        message = error(await s.call_tool("search", {"query": QUERY, "collection": "docs"}))
        assert message.endswith("no collection 'docs' that you may use (there are: ragkit/notes)")

    try:
        with running(app) as url:
            refused = httpx.post(
                url + "/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Accept": "application/json, text/event-stream"},
                timeout=LIMIT,
            )
            assert refused.status_code == 401
            run(lambda: http_session(url + "/mcp", check, {"Authorization": "Bearer notes-only"}))
    finally:
        service.close()


# --- the tools' answers and errors, in memory ------------------------------------------------


@pytest.fixture(scope="module")
def service(data_dir: Path) -> Any:
    s = Service(settings(data_dir))
    yield s
    s.close()


def calls(server: Any, *requests: tuple[str, dict]) -> list[CallToolResult]:
    async def go() -> list[CallToolResult]:
        async with Client(server) as c:
            return [await c.call_tool(name, args) for name, args in requests]

    return run(go)


def test_without_a_default_the_tools_ask_for_a_collection(service: Service) -> None:
    listed, unnamed = calls(
        build_mcp(service), ("list_collections", {}), ("search", {"query": QUERY})
    )
    listed = data(listed)
    assert listed["default"] is None
    assert [(c["id"], c["name"], c["store"]) for c in listed["collections"]] == [
        ("ragkit/docs", "docs", "faiss"),
        ("ragkit/notes", "notes", "faiss"),
    ]
    docs = listed["collections"][0]
    assert docs["sources"] == len(list(DATA.iterdir())) and docs["chunks"] > docs["sources"]
    assert docs["embed_model"] == "hashing-384" and docs["dim"] == 384
    assert "name a collection" in error(unnamed)
    assert "ragkit/docs, ragkit/notes" in error(unnamed)


def test_arguments_reach_retrieval(data_dir: Path, service: Service) -> None:
    source = str(DATA / "09-filters.md")
    bm25, filtered, asked = calls(
        build_mcp(service, default_collection="docs"),
        ("search", {"query": QUERY, "k": 4, "mode": "bm25"}),
        ("search", {"query": QUERY, "where": json.dumps({"source": source})}),
        ("ask", {"question": QUESTION, "k": 1, "where": {"source": source}}),
    )
    assert data(bm25)["hits"] == expected_hits(data_dir, QUERY, k=4, mode="bm25")
    assert data(bm25)["hits"] != expected_hits(data_dir, QUERY, k=4)
    hits = data(filtered)["hits"]
    assert hits and {h["source"] for h in hits} == {source}
    sources = data(asked)["sources"]
    assert len(sources) == 1 and sources[0]["source"] == source


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("search", {"query": QUERY, "k": 0}, "k must be between 1 and 50, got 0"),
        ("ask", {"question": QUESTION, "k": 51}, "k must be between 1 and 50, got 51"),
        ("search", {"query": QUERY, "mode": "fuzzy"}, "unknown mode 'fuzzy'"),
        ("search", {"query": QUERY, "where": '{"page": {"$near": 2}}'}, "$near"),
        ("ask", {"question": QUESTION, "where": "{not json"}, "filter is not valid JSON"),
        ("search", {"query": "   "}, "the query is empty"),
        ("get_chunk", {"id": "no-such-chunk"}, "no chunk 'no-such-chunk' in the collection"),
        ("get_chunk", {"id": "x", "collection": "ragkit/nope"}, "no collection 'ragkit/nope'"),
    ],
)
def test_mistakes_are_tool_errors(service: Service, tool: str, args: dict, message: str) -> None:
    (result,) = calls(build_mcp(service, default_collection="docs"), (tool, args))
    assert message in error(result)


# --- on rag serve's own app ------------------------------------------------------------------


def test_rag_serve_app_serves_the_tools_behind_its_keys(data_dir: Path, tmp_path: Path) -> None:
    """``create_app`` mounts the tools at /mcp behind the gateway: the same keys, scopes and
    collections as the HTTP routes, and the SDK's Host check on a loopback bind."""
    from apps.serve.app import create_app
    from apps.serve.gateway import GatewayConfig
    from apps.serve.keys import KeyStore

    keys = KeyStore(tmp_path / "keys.sqlite")
    _, reader = keys.create("reader", scopes=["read"])
    _, notes_only = keys.create("notes only", scopes=["read"], collections=["notes"])
    _, ingest_only = keys.create("ingest only", scopes=["ingest"])
    app = create_app(
        settings(data_dir),
        keys=keys,
        gateway_config=GatewayConfig(rate_per_minute=None),
        host="127.0.0.1",
    )
    hits = expected_hits(data_dir, QUERY)

    async def everything(s: ClientSession) -> None:
        assert {t.name for t in (await s.list_tools()).tools} == TOOLS
        found = data(await s.call_tool("search", {"query": QUERY, "collection": "docs"}))
        assert found == {"query": QUERY, "hits": hits}
        listed = data(await s.call_tool("list_collections", {}))
        assert [c["id"] for c in listed["collections"]] == ["ragkit/docs", "ragkit/notes"]

    async def notes(s: ClientSession) -> None:
        listed = data(await s.call_tool("list_collections", {}))
        assert [c["id"] for c in listed["collections"]] == ["ragkit/notes"]
        found = data(await s.call_tool("search", {"query": "what do llamas eat"}))
        assert found["hits"] and all(h["source"].endswith("llamas.md") for h in found["hits"])
        message = error(await s.call_tool("search", {"query": QUERY, "collection": "docs"}))
        assert "no collection 'docs' that you may use" in message

    def post(url: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            url + "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream", **headers},
            timeout=LIMIT,
        )

    with running(app) as url:
        missing = post(url, {})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        assert post(url, {"Authorization": "Bearer rk-000000000000-nope"}).status_code == 401
        scope = post(url, {"Authorization": f"Bearer {ingest_only}"})
        assert scope.status_code == 403 and scope.json()["error"]["code"] == "scope_not_allowed"
        rebound = post(url, {"Authorization": f"Bearer {reader}", "Host": "evil.example"})
        assert rebound.status_code == 421, rebound.text  # DNS rebinding: refused
        run(lambda: http_session(url + "/mcp", everything, {"Authorization": f"Bearer {reader}"}))
        run(lambda: http_session(url + "/mcp", notes, {"Authorization": f"Bearer {notes_only}"}))
