"""Runs an ASGI app (``rag serve``'s) with uvicorn on a free loopback port for a test, the
way a deployment runs it: real sockets, real clients, nothing between them and the app.

    with running(create_app(settings)) as base_url:   # "http://127.0.0.1:PORT"
        OpenAI(base_url=base_url + "/v1", api_key="x").models.list()
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag.config import Settings


def hashing_settings(data_dir: Path, **kw: Any) -> Settings:
    """Settings for a server test: the model-free hashing embedder and, unless ``kw`` names
    another, the extractive generator."""
    kw.setdefault("generator", "extractive")
    return Settings(data_dir=data_dir, embed_model="hashing-384", embed_backend="hashing", **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app: Any, *, timeout: float = 20.0) -> Iterator[str]:
    """Serves ``app`` on 127.0.0.1 until the block ends; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the test server did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
