"""ragkit's collections as MCP tools: ``rag mcp`` serves them over stdio, and
:func:`mount_mcp` adds them to an HTTP app (``rag serve``) over streamable HTTP.

The tools (:mod:`apps.serve.mcp_tools`) are read-only: ``search``, ``ask``,
``list_collections`` and ``get_chunk``, over every collection of one data directory
(:class:`~apps.serve.service.Service`).

Over stdio (what an MCP client's configuration runs)::

    rag --data-dir ~/notes mcp --collection notes --generator extractive

stdout carries the protocol and nothing else: logs go to stderr, and while the server runs
file descriptor 1 points at stderr (the SDK does this), so a stray ``print`` cannot corrupt
a message.

Over HTTP, on a FastAPI app, before it starts::

    app = FastAPI(lifespan=...)
    mount_mcp(app, service, default_collection=None, path="/mcp", caller=check)

This adds a route at exactly ``/mcp`` (no redirect to ``/mcp/``) and chains the MCP session
manager's lifespan (``session_manager.run()``, the task group every MCP request runs in)
around the app's own, so the app's lifespan needs no change. Do not ``app.mount()`` the app
:func:`mcp_http_app` returns: Starlette does not run a mounted app's lifespan, and every
request would then fail. The transport is stateless and answers JSON (no session to keep),
with the SDK's 4 MiB body limit and, for a loopback ``host``, its DNS-rebinding protection
(the Host and Origin headers must be loopback ones). ``curl`` can call a tool in one
request::

    curl -s http://127.0.0.1:8000/mcp -H 'Content-Type: application/json' \\
      -H 'Accept: application/json, text/event-stream' \\
      -d '{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "search", "arguments": {"query": "chunk size"}}}'

``caller``, when given, is called with each HTTP request (a Starlette ``Request``; awaited
when it is a coroutine function, else run in a worker thread) before the request reaches the
MCP transport: it raises to refuse it (the app's exception handlers answer, so an
``ApiError(401)`` is rendered as the rest of the API renders it), or returns an object with
``may_see(collection_name) -> bool``, which limits every tool to those collections (or
``None`` for all). ``apps.serve.gateway.authenticate("read")`` returns such a callable.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rag.commands import (
    Command,
    add_collection_options,
    add_generation_options,
    settings_from_args,
)

if TYPE_CHECKING:
    from fastapi import FastAPI
    from mcp.server.mcpserver import MCPServer
    from starlette.applications import Starlette
    from starlette.types import Receive, Scope, Send

    from apps.serve.service import Service

#: What a ``caller`` hook is: the HTTP request in, an object with ``may_see(name)`` (or
#: ``None``) out, or an exception to refuse the request.
CallerHook = Callable[[Any], Any]


def build_mcp(service: Service, *, default_collection: str | None = None) -> MCPServer:
    """An ``MCPServer`` with the four read-only tools over ``service``'s collections.

    ``default_collection`` (a model id or a name) is what the tools use when a call names no
    collection; without it, the only collection of the data directory, and with several a
    tool error that lists them."""
    from importlib.metadata import PackageNotFoundError, version

    from mcp.server.mcpserver import MCPServer

    from apps.serve.mcp_tools import INSTRUCTIONS, CollectionTools, add_tools

    try:
        ours = version("ragkit")
    except PackageNotFoundError:
        ours = ""
    # MCPServer configures the root logger (logging.basicConfig) when nothing has yet: that
    # is the application's to do (rag mcp does; rag serve leaves it to uvicorn), so undone.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer = MCPServer("ragkit", instructions=INSTRUCTIONS, version=ours)
    root.handlers[:] = handlers
    root.setLevel(level)
    add_tools(server, CollectionTools(service, default_collection=default_collection))
    return server


# --- streamable HTTP --------------------------------------------------------------------------


def mcp_http_app(
    service: Service,
    *,
    default_collection: str | None = None,
    path: str = "/mcp",
    host: str = "127.0.0.1",
    caller: CallerHook | None = None,
) -> Starlette:
    """A standalone ASGI app serving the tools over streamable HTTP at ``path``, with its
    own lifespan (run it with uvicorn as it is). To add the tools to an existing FastAPI
    app use :func:`mount_mcp` instead (see the module docstring)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    server, endpoint = _http_endpoint(service, default_collection, host, caller)
    return Starlette(
        routes=[Route(path, endpoint=endpoint, name="mcp")],
        lifespan=lambda _app: server.session_manager.run(),
    )


def mount_mcp(
    app: FastAPI,
    service: Service,
    *,
    default_collection: str | None = None,
    path: str = "/mcp",
    host: str = "127.0.0.1",
    caller: CallerHook | None = None,
) -> MCPServer:
    """Serves the tools over streamable HTTP at ``path`` of ``app`` (a FastAPI or Starlette
    app that has not started yet) and chains the MCP session manager into its lifespan.
    ``host`` is the address the app listens on: a loopback one turns on the SDK's
    DNS-rebinding protection. Returns the ``MCPServer``."""
    import contextlib
    from collections.abc import AsyncIterator

    from starlette.routing import Route

    server, endpoint = _http_endpoint(service, default_collection, host, caller)
    app.router.routes.append(Route(path, endpoint=endpoint, name="mcp"))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with server.session_manager.run(), inner(app_) as state:
            yield state

    app.router.lifespan_context = lifespan
    return server


def _http_endpoint(
    service: Service, default_collection: str | None, host: str, caller: CallerHook | None
) -> tuple[MCPServer, _Endpoint]:
    server = build_mcp(service, default_collection=default_collection)
    # Builds the session manager (server.session_manager), with the SDK's Host/Origin
    # checks for a loopback host; the Starlette app it returns is not used.
    server.streamable_http_app(stateless_http=True, json_response=True, host=host)
    return server, _Endpoint(server, caller)


class _Endpoint:
    """The ASGI app at the MCP path: the ``caller`` check, then the SDK's transport. A class,
    not a function, so that Starlette routes every method (POST, GET, DELETE) to it."""

    def __init__(self, server: MCPServer, caller: CallerHook | None) -> None:
        self.server = server
        self.caller = caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from apps.serve.mcp_tools import CALLER_SCOPE_KEY

        if self.caller is not None:
            import anyio.to_thread
            from starlette.requests import Request

            request = Request(scope, receive)
            if inspect.iscoroutinefunction(self.caller):
                who = await self.caller(request)
            else:
                who = await anyio.to_thread.run_sync(self.caller, request)
            scope[CALLER_SCOPE_KEY] = who
        await self.server.session_manager.handle_request(scope, receive, send)


# --- rag mcp ------------------------------------------------------------------------------------


def _configure(p: argparse.ArgumentParser) -> None:
    # Every store's collections are served, so there is no --store; --collection names the
    # default one.
    add_collection_options(p, store=False, json_output=False)
    for action in p._actions:
        if action.dest == "collection":
            action.help = (
                "the collection a tool call that names none uses (default: the only one in "
                "the data directory; RAG_COLLECTION)"
            )
    add_generation_options(p)


def _run(args: argparse.Namespace) -> int:
    import anyio

    from apps.serve.service import Service

    # Before anything logs: stderr only (stdout is the protocol's), and quiet unless --debug.
    logging.basicConfig(
        level=logging.INFO if getattr(args, "debug", False) else logging.WARNING,
        stream=sys.stderr,
        format="rag mcp: %(levelname)s %(name)s: %(message)s",
    )
    settings = settings_from_args(args)
    # Settings.collection is "default" when nothing was said; only an explicit name is one.
    named = getattr(args, "collection", None) or os.environ.get("RAG_COLLECTION") or None
    service = Service(settings)
    try:
        if named is not None:
            service.resolve(named)  # an unknown name fails now, with the list, not per call
        server = build_mcp(service, default_collection=named)
        anyio.run(server.run_stdio_async)
    finally:
        service.close()
    return 0


command = Command(
    help="serve the collections as MCP tools over stdio (search, ask, list, read)",
    configure=_configure,
    run=_run,
)
