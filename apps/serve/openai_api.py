"""The OpenAI-compatible routes of ``rag serve``: a collection is a model (``ragkit/<name>``).

- ``GET /v1/models`` (and ``/v1/models/{id}``): the collections the caller may use, in
  OpenAI's list shape, with ragkit's counts and embedder as extension fields.
- ``POST /v1/chat/completions``: the last user message answered from the collection with
  citations (``Collection.ask``), streamed as OpenAI's ``chat.completion.chunk`` events or
  returned whole, with the passages in the extension field ``sources``.
- ``POST /v1/search``: the passages for a query, exactly as ``rag search --json`` prints them.
- ``POST /v1/embeddings``: the collection's embedder, in OpenAI's embeddings shape
  (``encoding_format`` ``float`` or ``base64``, which the ``openai`` package asks for).

Every request model forbids fields it does not declare: a parameter ragkit cannot honour
(``tools``, ``response_format``, ``logprobs: true``, ``n`` above 1) is a 400 that names it,
never silently dropped. The OpenAI sampling fields a chat client sends by habit are declared
and documented as accepted and not used (see :class:`ChatRequest`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from apps.serve.errors import ApiError
from apps.serve.gateway import Caller, authenticate, check_collection
from apps.serve.openai_schema import (
    ERROR_RESPONSES,
    ChatCompletion,
    ChatMessage,
    ChatRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    SearchRequest,
    SearchResponse,
    TextPart,
)
from apps.serve.service import CollectionRef, Service, UnknownCollection
from rag.errors import ConfigError, GenerationError, RagError, RouteRefused
from rag.filters import Filter, parse

if TYPE_CHECKING:
    from rag.collection import Collection
    from rag.generation import Generator
    from rag.types import Answer

logger = logging.getLogger("rag")

#: Answer pieces waiting to be sent on one stream; the generator waits when it is full.
STREAM_QUEUE = 256
#: Seconds between SSE comment lines that keep an idle stream open through proxies.
PING_SECONDS = 15
#: Seconds a stream may go on after a shutdown signal (``rag serve`` sets
#: ``app.state.stream_grace`` from ``--shutdown-timeout``).
DEFAULT_STREAM_GRACE = 25.0

ReadCaller = Annotated[Caller, Depends(authenticate("read"))]


# --- shared state -------------------------------------------------------------------------------


class SharedGenerators:
    """One generator per collection, built from the server's settings on first use and
    shared by every request. No lock around generation: the extractive generator keeps no
    state, the OpenAI one is an HTTP client, and the local one hands each request to its
    llama.cpp server, which queues concurrent requests itself (rag/generation/local.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._built: dict[tuple[str, str], Generator] = {}

    def get(self, ref: CollectionRef, col: Collection) -> Generator | None:
        """The collection's generator, or ``None`` where a routes file chooses one per
        question (``Collection.ask`` then routes, as ``rag ask`` does)."""
        from rag.generation import load_generator
        from rag.routing import router_for

        if router_for(col) is not None:
            return None
        with self._lock:
            gen = self._built.get((ref.store, ref.name))
            if gen is None:
                try:
                    gen = load_generator(col.settings, embed=col.embedder.embed)
                except (ConfigError, GenerationError) as e:
                    logger.error("rag serve: the generator cannot be loaded: %s", e)
                    raise ApiError(
                        503,
                        f"the server's generator ({col.settings.generator}) cannot be loaded; "
                        "its log says why",
                        type="server_error",
                        code="generator_unavailable",
                    ) from e
                self._built[(ref.store, ref.name)] = gen
            return gen


def _service(request: Request) -> Service:
    return request.app.state.service


def _resolve(service: Service, caller: Caller, model: str) -> CollectionRef:
    """The collection ``model`` names, which ``caller`` must be allowed to use. The 404
    lists only the collections the caller may see."""
    try:
        ref = service.resolve(model)
    except UnknownCollection:
        known = ", ".join(r.id for r in service.refs() if caller.may_see(r.name))
        raise UnknownCollection(
            f"no collection {model!r} here (there are: {known or 'none you may use'})"
        ) from None
    check_collection(caller, ref.name)
    return ref


# --- routes -------------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


def _card(service: Service, ref: CollectionRef) -> ModelCard:
    from rag.manifest import Manifest, collection_dir

    try:
        created = int(
            Manifest.load(
                collection_dir(service.settings, ref.name, ref.store) / "manifest.json"
            ).created
        )
    except (RagError, TypeError, ValueError):
        created = 0
    return ModelCard(
        id=ref.id,
        created=created,
        collection=ref.name,
        store=ref.store,
        chunks=ref.chunks,
        sources=ref.sources,
        embed_model=ref.embed_model,
        dim=ref.dim,
    )


@router.get("/models", response_model=ModelList)
async def list_models(request: Request, caller: ReadCaller) -> ModelList:
    """The collections of the data directory that the caller may use."""
    service = _service(request)

    def run() -> ModelList:
        return ModelList(data=[_card(service, r) for r in service.refs() if caller.may_see(r.name)])

    return await run_in_threadpool(run)


@router.get("/models/{model:path}", response_model=ModelCard)
async def get_model(model: str, request: Request, caller: ReadCaller) -> ModelCard:
    """One collection, by its model id."""
    service = _service(request)
    return await run_in_threadpool(lambda: _card(service, _resolve(service, caller, model)))


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, request: Request, caller: ReadCaller) -> dict[str, Any]:
    """The best passages for ``query``: the JSON ``rag search --json`` prints."""
    service = _service(request)

    def run() -> dict[str, Any]:
        ref = _resolve(service, caller, body.model)
        where = parse(body.where)
        # Concurrent dense searches share the model and store calls (apps.serve.batching).
        hits = service.search(ref, body.query, k=body.k, where=where, mode=body.mode, mmr=body.mmr)
        return {"query": body.query, "hits": [h.to_json() for h in hits]}

    return await run_in_threadpool(run)


@router.post("/embeddings", response_model=EmbeddingList)
async def embeddings(body: EmbeddingRequest, request: Request, caller: ReadCaller) -> EmbeddingList:
    """Vectors of ``input`` by the collection's embedding model (L2-normalised float32)."""
    service = _service(request)

    def run() -> EmbeddingList:
        ref = _resolve(service, caller, body.model)
        embedder = service.collection(ref).embedder
        if body.dimensions is not None and body.dimensions != embedder.dim:
            raise ApiError(
                400,
                f"{ref.id} makes {embedder.dim}-dimensional vectors, not {body.dimensions}",
                code="invalid_dimensions",
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        vectors = np.asarray(embedder.embed(texts), dtype="<f4")
        tokens = int(sum(embedder.count_tokens(texts)))
        data = [
            Embedding(
                index=i,
                embedding=base64.b64encode(v.tobytes()).decode("ascii")
                if body.encoding_format == "base64"
                else v.tolist(),
            )
            for i, v in enumerate(vectors)
        ]
        return EmbeddingList(
            data=data, model=ref.id, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
        )

    return await run_in_threadpool(run)


_EVENT_STREAM = {
    "description": "with stream=true: server-sent events, one chat.completion.chunk per "
    "data line, the passages in the last one, then data: [DONE]",
    "content": {
        "text/event-stream": {
            # Open API 3.1: the schema of one event.
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        "description": "a chat.completion.chunk (JSON text); then [DONE], or "
                        'an {"error": ...} object when the answer fails mid-stream',
                    },
                    "event": {"type": "string"},
                },
            }
        }
    },
}


@router.post("/chat/completions", response_model=ChatCompletion, responses={200: _EVENT_STREAM})
async def chat_completions(body: ChatRequest, request: Request, caller: ReadCaller) -> Any:
    """The last user message answered from the collection, citing its passages as [n]."""
    question, history = conversation(body.messages)
    service = _service(request)
    generators: SharedGenerators = request.app.state.generators

    def prepare() -> _Asker:
        ref = _resolve(service, caller, body.model)
        where = parse(body.where)
        col = service.collection(ref)
        return _Asker(ref, col, generators.get(ref, col), where, body, service)

    asker = await run_in_threadpool(prepare)
    if not body.stream:
        answer = await run_in_threadpool(asker.ask, question, history, None)
        return completion(asker.ref, answer)
    return await _stream(request, asker, question, history)


# --- chat -------------------------------------------------------------------------------------


def _text(content: str | list[TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)


def conversation(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last message, the user's) and the earlier (question, answer)
    pairs; a user message without an answer pairs with ``""``."""
    turns = [(m.role, _text(m.content)) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user":
        raise ApiError(
            400, "the last message must be the user's question (role 'user')", code="no_question"
        )
    question = turns[-1][1]
    if not question.strip():
        raise ApiError(400, "the question is empty: say what to look for", code="no_question")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for role, text in turns[:-1]:
        if role == "user":
            if pending is not None:
                history.append((pending, ""))
            pending = text
        elif pending is not None:
            history.append((pending, text))
            pending = None
    if pending is not None:
        history.append((pending, ""))
    return question, history


@dataclass
class _Asker:
    ref: CollectionRef
    collection: Collection
    generator: Generator | None
    where: Filter | None
    body: ChatRequest
    service: Service

    def ask(
        self, question: str, history: list[tuple[str, str]], on_token: Callable[[str], None] | None
    ) -> Answer:
        metrics = self.service.metrics
        try:
            answer = self._ask(question, history, on_token)
        except Exception as e:
            if metrics is not None and not isinstance(e, _Abandoned):
                metrics.outcome(self.ref.id, "chat", e)
            raise
        if metrics is not None:
            metrics.answer(self.ref.id, answer.timings)
            metrics.outcome(self.ref.id, "chat", None)
        return answer

    def _ask(
        self, question: str, history: list[tuple[str, str]], on_token: Callable[[str], None] | None
    ) -> Answer:
        b = self.body
        return self.collection.ask(
            question,
            k=b.k,
            where=self.where,
            mode=b.mode,
            mmr=b.mmr,
            history=history,
            generator=self.generator,
            on_token=on_token,
            # Retrieval joins the concurrent searches' batches (Service.search).
            search=functools.partial(self.service.search, self.ref),
        )


def _page(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def sources(answer: Answer) -> list[dict[str, Any]]:
    """The passages of ``answer``: passage ``[n]`` of its text is the one with index n."""
    cited = set(answer.citations)
    out = []
    for n, hit in enumerate(answer.sources, 1):
        meta = hit.chunk.metadata
        out.append(
            {
                "index": n,
                "id": hit.id,
                "source": hit.chunk.source,
                "title": None if meta.get("title") is None else str(meta["title"]),
                "heading": None if meta.get("heading") is None else str(meta["heading"]),
                "page": _page(meta.get("page")),
                "score": round(float(hit.score), 6),
                "cited": n in cited,
                "text": hit.chunk.text,
            }
        )
    return out


def _extensions(answer: Answer) -> dict[str, Any]:
    return {
        "sources": sources(answer),
        "citations": list(answer.citations),
        "query": answer.query,
        "grounding": answer.grounding,
        "route": answer.route,
        "route_reason": answer.route_reason,
        "generator": answer.generator,
    }


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def completion(ref: CollectionRef, answer: Answer) -> dict[str, Any]:
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ref.id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": dict(_NO_USAGE),
        **_extensions(answer),
    }


class _Abandoned(Exception):
    """The stream's reader is gone: raised in the worker to stop generating."""


class _Channel:
    """Hands the worker thread's answer pieces to the event loop through a bounded queue;
    a full queue makes the worker wait, a closed channel makes it stop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(STREAM_QUEUE)
        self.closed = threading.Event()
        self._getter: asyncio.Future[tuple[str, Any]] | None = None

    def put(self, item: tuple[str, Any]) -> None:  # worker thread
        if self.closed.is_set():
            raise _Abandoned
        done = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:
            try:
                done.result(timeout=0.25)
                return
            except concurrent.futures.TimeoutError:
                if self.closed.is_set():
                    done.cancel()
                    raise _Abandoned from None

    async def get(self, request: Request | None = None) -> tuple[str, Any] | None:
        """The next item; ``None`` when ``request``'s client disconnects first."""
        if self._getter is None:
            self._getter = asyncio.ensure_future(self.queue.get())
        while True:
            done, _ = await asyncio.wait({self._getter}, timeout=1.0)
            if done:
                item, self._getter = self._getter.result(), None
                return item
            if request is not None and await request.is_disconnected():
                return None

    def close(self) -> None:
        self.closed.set()
        if self._getter is not None:
            self._getter.cancel()


_WORKERS: set[asyncio.Task[None]] = set()


async def _stream(
    request: Request, asker: _Asker, question: str, history: list[tuple[str, str]]
) -> Response:
    channel = _Channel(asyncio.get_running_loop())

    def work() -> None:
        try:
            answer = asker.ask(question, history, lambda piece: channel.put(("token", piece)))
            channel.put(("answer", answer))
        except _Abandoned:
            pass
        except Exception as e:
            with contextlib.suppress(_Abandoned, RuntimeError):  # RuntimeError: loop closed
                channel.put(("error", e))

    worker = asyncio.ensure_future(anyio.to_thread.run_sync(work))
    _WORKERS.add(worker)
    worker.add_done_callback(_WORKERS.discard)
    try:
        # Wait for the first piece before answering, so that what fails before it (a route
        # refusal, a generator error) gets its own status instead of a broken stream.
        first = await channel.get(request)
    except BaseException:
        channel.close()
        raise
    if first is None:
        channel.close()
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it
    if first[0] == "error":
        channel.close()
        raise first[1]
    include_usage = bool(asker.body.stream_options and asker.body.stream_options.include_usage)
    events = _events(channel, first, asker.ref, include_usage=include_usage)
    grace = float(getattr(request.app.state, "stream_grace", DEFAULT_STREAM_GRACE))
    return EventSourceResponse(events, ping=PING_SECONDS, sep="\n", shutdown_grace_period=grace)


async def _events(
    channel: _Channel, item: tuple[str, Any] | None, ref: CollectionRef, *, include_usage: bool
) -> AsyncIterator[str]:
    cid, created = _completion_id(), int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ref.id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        return json.dumps(body, ensure_ascii=False)

    streamed: list[str] = []
    try:
        yield chunk({"role": "assistant", "content": ""})
        while item is not None:
            kind, value = item
            if kind == "token":
                if value:
                    streamed.append(value)
                    yield chunk({"content": value})
            elif kind == "answer":
                extra = _extensions(value)
                if value.text != "".join(streamed).strip():
                    # ragkit changed the streamed text (it matched citations to an answer
                    # that had none): the answer as it stands.
                    extra["answer"] = value.text
                yield chunk({}, "stop", **extra)
                if include_usage:
                    yield json.dumps(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": ref.id,
                            "choices": [],
                            "usage": dict(_NO_USAGE),
                        }
                    )
                yield "[DONE]"
                return
            else:
                yield json.dumps(stream_error(value))
                return
            item = await channel.get()
    finally:
        channel.close()


def stream_error(error: BaseException) -> dict[str, Any]:
    """An error after the stream began, in the shape OpenAI streams send (``data: {"error":
    ...}``), which the ``openai`` package raises as an ``APIError``."""
    if isinstance(error, RouteRefused):
        return ApiError(403, str(error), type="permission_error", code="route_refused").body()
    if isinstance(error, GenerationError):
        return ApiError(502, str(error), type="server_error", code="generator_error").body()
    logger.error("rag serve: a streamed answer failed", exc_info=error)
    return ApiError(500, "internal error: the answer failed", type="server_error").body()
