"""``rag serve``: every collection of a data directory over HTTP, as an OpenAI-compatible
API (``/v1/models``, ``/v1/chat/completions``, ``/v1/embeddings``) plus ``/v1/search``,
with uvicorn.

    rag serve --data-dir .rag --generator extractive
    curl http://127.0.0.1:8000/v1/models

It listens on loopback (127.0.0.1:8000 by default); another address only when the data
directory holds an active API key (``rag keys create``), which every request must then
bring. SIGINT or SIGTERM stop it gracefully: no new connections, and requests in flight
(streams included) get ``--shutdown-timeout`` seconds to finish.

The gateway's limits (:class:`apps.serve.limits.GatewayConfig`) are options: requests per
minute per key and the burst, body and upload sizes, requests in flight and queued, and the
time to the first byte. Their defaults are written here as well, so that ``rag --help``
does not import the server; a test holds them equal to ``GatewayConfig``'s.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from typing import Any

from rag.commands import (
    Command,
    add_collection_options,
    add_generation_options,
    add_log_queries_option,
    printable,
    settings_from_args,
)
from rag.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
#: GatewayConfig's defaults, in the options' units.
DEFAULT_RATE_PER_MINUTE = 120.0
DEFAULT_BURST = 20
DEFAULT_MAX_BODY_MB = 1.0
DEFAULT_MAX_UPLOAD_MB = 64.0
DEFAULT_MAX_IN_FLIGHT = 8
DEFAULT_MAX_QUEUED = 32
DEFAULT_TIMEOUT = 60.0
#: Batching (kept equal to BatchConfig()'s by a test).
DEFAULT_BATCH_MAX = 32
DEFAULT_BATCH_WAIT_MS = 5.0
_MB = 1 << 20


def _configure(p: argparse.ArgumentParser) -> None:
    add_collection_options(p, collection=False, store=False, json_output=False)
    add_log_queries_option(p)
    g = p.add_argument_group("server options")
    g.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}; any other needs an API key: "
        "rag keys create)",
    )
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long requests in flight get to finish "
        f"(default {DEFAULT_SHUTDOWN_TIMEOUT:g})",
    )
    _add_gateway_options(p)
    _add_batching_options(p)
    add_generation_options(p)


def _add_batching_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "batching", "concurrent dense searches share one embedder and one store call"
    )
    g.add_argument(
        "--batch-max",
        type=int,
        default=DEFAULT_BATCH_MAX,
        metavar="N",
        help=f"the most searches in one batch (default {DEFAULT_BATCH_MAX})",
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULT_BATCH_WAIT_MS,
        metavar="MS",
        help="how long a search waits for companions while others are arriving "
        f"(default {DEFAULT_BATCH_WAIT_MS:g})",
    )
    g.add_argument(
        "--no-batching", action="store_true", help="every search embeds and searches alone"
    )


def batch_config(args: argparse.Namespace) -> Any:
    """The :class:`~apps.serve.batching.BatchConfig` the options ask for (its own checks
    raise :class:`~rag.errors.ConfigError` on a bad value)."""
    from apps.serve.batching import BatchConfig

    return BatchConfig(
        enabled=not args.no_batching, max_batch=args.batch_max, max_wait_ms=args.batch_wait_ms
    )


def _add_gateway_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "limits", "what one server accepts; past them it answers 429, 413, 503 or 504"
    )
    g.add_argument(
        "--rate-per-minute",
        type=float,
        default=DEFAULT_RATE_PER_MINUTE,
        metavar="N",
        help="requests per minute per API key (keyless: per client address); 0: no limit; "
        f"a key's own --rate wins (default {DEFAULT_RATE_PER_MINUTE:g})",
    )
    g.add_argument(
        "--burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="N",
        help="requests a key may make at once after a pause, at most a minute's worth "
        f"(default {DEFAULT_BURST})",
    )
    g.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_MB,
        metavar="MB",
        help=f"largest JSON request body (default {DEFAULT_MAX_BODY_MB:g})",
    )
    g.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help="largest upload to POST /v1/collections/NAME/documents, all its files together "
        f"(default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        metavar="N",
        help=f"requests served at once (default {DEFAULT_MAX_IN_FLIGHT})",
    )
    g.add_argument(
        "--max-queued",
        type=int,
        default=DEFAULT_MAX_QUEUED,
        metavar="N",
        help="requests waiting for a turn; one more is answered 503 at once "
        f"(default {DEFAULT_MAX_QUEUED})",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="from a request's arrival to the start of its answer, waiting and an upload's "
        "ingest included; "
        f"later: 504 (default {DEFAULT_TIMEOUT:g})",
    )


def gateway_config(args: argparse.Namespace) -> Any:
    """The :class:`~apps.serve.limits.GatewayConfig` the options ask for, or
    :class:`~rag.errors.ConfigError` naming the option that is out of range."""
    from apps.serve.limits import GatewayConfig

    def positive(option: str, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{option} must be more than 0, got {value:g}")
        return value

    if not (math.isfinite(args.rate_per_minute) and args.rate_per_minute >= 0):
        raise ConfigError(
            f"--rate-per-minute must be 0 (no limit) or more, got {args.rate_per_minute:g}"
        )
    if args.max_queued < 0:
        raise ConfigError(f"--max-queued must be 0 or more, got {args.max_queued}")
    body = max(1, int(positive("--max-body-mb", args.max_body_mb) * _MB))
    upload = max(1, int(positive("--max-upload-mb", args.max_upload_mb) * _MB))
    return GatewayConfig(
        rate_per_minute=args.rate_per_minute or None,
        burst=int(positive("--burst", args.burst)),
        max_body_bytes=body,
        max_upload_bytes=upload,
        max_in_flight=int(positive("--max-in-flight", args.max_in_flight)),
        max_queued=args.max_queued,
        timeout=positive("--timeout", args.timeout),
    )


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if not args.shutdown_timeout >= 0:
        raise ConfigError(f"--shutdown-timeout must be 0 or more, got {args.shutdown_timeout}")


def _check_generator(settings: Any) -> None:
    """Fail now, not on the first question, when the generator's package is missing."""
    from rag import plugins
    from rag.generation import resolve_generator_name
    from rag.routing import find_routes

    if find_routes(settings) is None:
        plugins.load("generators", resolve_generator_name(settings))


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from apps.serve.app import create_app
    from apps.serve.gateway import check_bind
    from apps.serve.keys import open_key_store

    _check(args)
    limits = gateway_config(args)
    settings = settings_from_args(args)
    # With no active key the server is keyless, and then loopback only.
    keys = open_key_store(settings.data_dir)
    check_bind(args.host, keys)
    _check_generator(settings)
    app = create_app(
        settings, keys=keys, gateway_config=limits, batching=batch_config(args), host=args.host
    )
    # Streams get the same time to finish as every other request in flight.
    app.state.stream_grace = max(0.0, args.shutdown_timeout - 1.0)
    refs = app.state.service.refs()
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}"

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # listening: say where, and what it serves
                access = "API keys required" if keys is not None else "keyless, loopback only"
                print(
                    f"rag serve: {url}/v1 (OpenAI-compatible, {access}; Ctrl-C stops it)",
                    flush=True,
                )
                print(f"  MCP tools (streamable HTTP): {url}/mcp", flush=True)
                if not refs:
                    print(f"  no collections in {printable(str(settings.data_dir))} yet")
                for ref in refs:
                    print(f"  model {printable(ref.id)}  ({ref.chunks} chunks)", flush=True)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        timeout_graceful_shutdown=args.shutdown_timeout,
        log_level="info",
        server_header=False,
    )
    # uvicorn catches SIGINT/SIGTERM, shuts down gracefully, then raises the signal again
    # with the handlers it found: these make that second delivery a clean exit (status 0)
    # instead of a death by signal or a KeyboardInterrupt.
    stopped: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda n, _frame: stopped.append(n))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        print("rag serve: stopped", file=sys.stderr)
    return 0


serve = Command(
    help="serve the collections over HTTP: an OpenAI-compatible API, search, embeddings",
    configure=_configure,
    run=_run,
)
