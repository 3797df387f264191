"""A loopback OpenAI-compatible chat server for tests.

It listens on 127.0.0.1 (a free port), speaks ``POST /v1/chat/completions`` (plain JSON,
and ``"stream": true`` as server-sent events ending with ``data: [DONE]``) and
``GET /v1/models``, records every request it receives, and answers either with a canned
reply or with a real model in process (anything with a
``chat(messages, *, max_tokens=...)`` method that yields text pieces, such as
:class:`rag.generation.local.LocalGenerator`)::

    with ChatServer(reply="Paris is the capital [2].") as server:
        generator = OpenAIGenerator("test-model", base_url=server.base_url, api_key=None)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

Messages = list[dict[str, Any]]


class ChatBackend(Protocol):
    """A model that streams its reply to chat messages."""

    def chat(
        self, messages: Sequence[dict[str, str]], *, max_tokens: int | None = None
    ) -> Iterator[str]: ...


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None = None

    @property
    def messages(self) -> Messages:
        return list((self.body or {}).get("messages", []))


@dataclass
class ChatServer:
    """An OpenAI-compatible chat endpoint on loopback, for tests (see the module docstring).

    ``reply`` is the canned answer (or a function of the request's messages returning it),
    sent in word-sized pieces when streaming; ``backend`` answers with a real model
    instead. ``models`` are listed at ``/v1/models``; a request naming another model gets a
    404 like OpenAI's. With ``api_key``, other keys get a 401. With ``fail`` (status,
    content type, body), every request gets that answer instead, as a broken or hostile
    server would send it.
    """

    reply: str | Callable[[Messages], str] = "This is a canned reply [1]."
    backend: ChatBackend | None = None
    models: Sequence[str] = ("test-model",)
    api_key: str | None = None
    fail: tuple[int, str, str] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ChatServer:
        handler = type("Handler", (_Handler,), {"chat_server": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="chat-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the chat server is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The URL to give as ``OPENAI_BASE_URL`` (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- answering -------------------------------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The chat completion requests received so far, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    def pieces(self, body: dict[str, Any]) -> Iterator[str]:
        messages = list(body.get("messages", []))
        if self.backend is not None:
            limit = body.get("max_tokens") or body.get("max_completion_tokens")
            yield from self.backend.chat(messages, max_tokens=limit)
            return
        text = self.reply(messages) if callable(self.reply) else self.reply
        yield from re.findall(r"\S+\s*|\s+", text)


class _Handler(BaseHTTPRequestHandler):
    chat_server: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        self._send_json(
            status, {"error": {"message": message, "type": kind, "code": code, "param": None}}
        )

    def _failed(self) -> bool:
        fail = self.chat_server.fail
        if fail is None:
            return False
        status, content_type, body = fail
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def _authorised(self) -> bool:
        if self._failed():
            return False
        key = self.chat_server.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return False

    def do_GET(self) -> None:
        server = self.chat_server
        server.record(RecordedRequest("GET", self.path, self._headers()))
        if not self._authorised():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "test"}
                for m in server.models
            ]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._error(404, f"no route for GET {self.path}", "not_found")

    def do_POST(self) -> None:
        server = self.chat_server
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._error(400, "the body is not JSON", "invalid_request_error")
            return
        server.record(RecordedRequest("POST", self.path, self._headers(), body))
        if not self._authorised():
            return
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route for POST {self.path}", "not_found")
            return
        model = body.get("model")
        if model not in server.models:
            self._error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
            return
        created = int(time.time())
        ident = f"chatcmpl-test{len(server.requests)}"
        if not body.get("stream"):
            text = "".join(server.pieces(body))
            self._send_json(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        event({"role": "assistant", "content": ""})
        for piece in server.pieces(body):
            event({"content": piece})
        event({}, "stop")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
