"""The ``rag serve`` application: the OpenAI-compatible routes (:mod:`apps.serve.openai_api`)
over every collection of a data directory, uploads into them
(:mod:`apps.serve.ingest_api`), the MCP tools over streamable HTTP at ``/mcp``
(:mod:`apps.serve.mcp_server`), health probes, and errors in OpenAI's shape, all behind
one gateway (:mod:`apps.serve.gateway`: keys, rate, sizes, queue, timeout).

    app = create_app(Settings(data_dir=".rag", generator="extractive"), host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every error answers ``{"error": {"message", "type", "code"}}``, which OpenAI clients raise
as their own exceptions: a malformed request (validation, filter, settings) is a 400, an
unknown collection a 404, a route refusal a 403 with the router's reason, a generator
failure a 502, and anything unexpected a 500 whose message says nothing of the internals
(the traceback goes to the server's log).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from apps.serve import gateway
from apps.serve.errors import ApiError
from apps.serve.gateway import Caller
from apps.serve.ingest_api import router as ingest_router
from apps.serve.mcp_server import mount_mcp
from apps.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from apps.serve.openai_api import SharedGenerators, router
from apps.serve.openai_schema import ErrorResponse
from apps.serve.service import Service, UnknownCollection
from rag.errors import (
    CollectionNotFoundError,
    ConfigError,
    FilterError,
    GenerationError,
    RagError,
    RouteRefused,
)

if TYPE_CHECKING:
    from apps.serve.batching import BatchConfig
    from apps.serve.keys import KeyStore
    from apps.serve.limits import GatewayConfig
    from rag.config import Settings

logger = logging.getLogger("rag")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    collections: int


def create_app(
    settings: Settings,
    *,
    keys: KeyStore | None = None,
    gateway_config: GatewayConfig | None = None,
    batching: BatchConfig | None = None,
    host: str = "127.0.0.1",
) -> FastAPI:
    """The application serving every collection under ``settings.data_dir``, answering with
    the generator ``settings`` choose (built once per collection).

    ``keys`` (the API key store of :mod:`apps.serve.keys`) and ``gateway_config`` are
    handed to the gateway (:mod:`apps.serve.gateway`), ``batching`` to the service
    (:mod:`apps.serve.batching`; ``None``: batching on, with its defaults); without keys every caller may read
    every collection, so a server without keys must listen on loopback only (``rag serve``
    refuses anything else). ``host`` is the address the app will listen on: on a loopback
    one the MCP transport also checks that requests name a loopback Host and Origin (no
    DNS rebinding). The app starts once: its lifespan runs the MCP session manager, which
    cannot be started twice."""
    service = Service(settings, batching=batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="ragkit",
        version=_version(),
        summary="An OpenAI-compatible API over the collections of a ragkit data directory",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.service = service
    app.state.keys = keys
    app.state.generators = SharedGenerators()
    _add_error_handlers(app)
    app.include_router(router)
    app.include_router(ingest_router)
    _add_probes(app, service)
    metrics = Metrics(service.batch_stats)
    service.metrics = metrics
    _add_metrics(app, metrics)
    # The MCP tools answer the same keys as the routes: a key without the read scope is
    # refused (401/403, in the API's error shape), one limited to some collections sees only
    # those. No default collection: a call names one unless there is only one it may use.
    mount_mcp(app, service, path="/mcp", host=host, caller=gateway.authenticate("read"))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # Keys, rate limits, body-size limits, the load-shedding queue and the timeout, in front
    # of every route (the MCP one included) but the health probes.
    gateway.install(app, gateway_config, keys)
    # Outermost: it counts what the gateway refuses too, and times streams to their end.
    app.add_middleware(MetricsMiddleware, metrics=metrics, skip=("/metrics",))
    return app


def _version() -> str:
    try:
        return version("ragkit")
    except PackageNotFoundError:
        return "0"


# --- health ------------------------------------------------------------------------------------


def _add_probes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is alive and answering."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Ready,
        tags=["health"],
        responses={503: {"model": ErrorResponse, "description": "not ready"}},
    )
    async def readyz() -> Ready:
        """The data directory is readable and its collections can be listed."""

        def check() -> int:
            folder = service.settings.data_dir
            if not folder.is_dir():
                raise ApiError(
                    503,
                    "not ready: the data directory does not exist (ingest documents first)",
                    type="server_error",
                    code="not_ready",
                )
            if not os.access(folder, os.R_OK | os.X_OK):
                raise ApiError(
                    503,
                    "not ready: the data directory is not readable",
                    type="server_error",
                    code="not_ready",
                )
            return len(service.refs())

        try:
            count = await run_in_threadpool(check)
        except ApiError:
            raise
        except Exception as e:
            logger.warning("rag serve: not ready: %s", e)
            raise ApiError(
                503,
                "not ready: the collections cannot be listed (the server's log says why)",
                type="server_error",
                code="not_ready",
            ) from e
        return Ready(status="ready", collections=count)


def _add_metrics(app: FastAPI, metrics: Metrics) -> None:
    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus metrics"}},
    )
    async def prometheus(
        caller: Annotated[Caller, Depends(gateway.authenticate("read"))],
    ) -> Response:
        """Prometheus metrics in the text exposition format (see apps/serve/metrics.py)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)


# --- errors ------------------------------------------------------------------------------------


def _answer(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def _add_error_handlers(app: FastAPI) -> None:
    # Starlette picks the handler of the nearest class in the exception's MRO.
    def on(kind: type[BaseException], status: int, type_: str, code: str | None) -> None:
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            return _answer(ApiError(status, str(exc), type=type_, code=code))

        app.add_exception_handler(kind, handler)

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _answer(exc)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _answer(ApiError(400, validation_message(exc), code="invalid_request"))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        type_ = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return _answer(
            ApiError(exc.status_code, str(exc.detail), type=type_, code=code, headers=exc.headers)
        )

    async def rag_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("rag serve: %s failed", request.url.path, exc_info=exc)
        return _answer(ApiError(500, "internal error: the request failed", type="server_error"))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer is sent.
        return _answer(ApiError(500, "internal error", type="server_error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    on(UnknownCollection, 404, "invalid_request_error", "model_not_found")
    on(CollectionNotFoundError, 404, "invalid_request_error", "model_not_found")
    on(FilterError, 400, "invalid_request_error", "invalid_filter")
    on(ConfigError, 400, "invalid_request_error", "invalid_request")
    on(RouteRefused, 403, "permission_error", "route_refused")
    on(GenerationError, 502, "server_error", "generator_error")
    app.add_exception_handler(RagError, rag_error)
    app.add_exception_handler(Exception, unexpected)


def validation_message(exc: RequestValidationError, *, most: int = 5) -> str:
    """The validation errors in one line, naming each field (never echoing its value)."""
    errors = list(exc.errors())
    parts = []
    for err in errors[:most]:
        field = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        kind = err.get("type")
        if kind == "extra_forbidden":
            message = "unsupported parameter: rag serve does not implement it"
        elif kind == "json_invalid":
            message = "the request body is not valid JSON"
            field = ""
        else:
            message = str(err.get("msg", "invalid"))
        parts.append(f"{field}: {message}" if field else message)
    if len(errors) > most:
        parts.append(f"and {len(errors) - most} more")
    return "; ".join(parts) or "invalid request"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, less the 422 answers it declares by default: validation errors
    are 400s here (:data:`apps.serve.openai_api.ERROR_RESPONSES`), as OpenAI's are."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
