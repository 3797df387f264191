"""The gateway in front of every endpoint: who is calling (API keys and their scopes and
collections), how often (per-key rate limits), how much (body size), how many at once
(a bounded queue that sheds load with 503) and for how long (a timeout).

Endpoints take the caller from the dependency :func:`authenticate`::

    Reader = Annotated[Caller, Depends(authenticate("read"))]   # (ruff's B008 wants Annotated)

    @app.post("/v1/search")
    def search(body: SearchBody, caller: Reader): ...
        check_collection(caller, ref.name)

and the app is wired once, in its factory, and checked once, in ``rag serve``::

    keys = open_key_store(settings.data_dir)    # None when no key is active: keyless
    check_bind(host, keys)                      # before uvicorn binds ``host``
    install(app, GatewayConfig(...), keys)      # in create_app, before the app serves

Without a key store (``app.state.keys is None``) the server runs keyless: it listens on
loopback only (:func:`check_bind`), and every caller may read every collection.

What a request meets, in order:

1. ``/healthz`` and ``/readyz`` (:attr:`GatewayConfig.exempt`) pass straight through: no
   limits, no key (their handlers must not ask for one either).
2. A ``Content-Length`` over the limit is refused at once with 413; a body without one
   (chunked) is counted as the app reads it, and refused with 413 when it passes the limit.
   Uploads (``POST /v1/collections/NAME/documents``) have their own, larger limit.
3. At most :attr:`~GatewayConfig.max_in_flight` requests run; up to
   :attr:`~GatewayConfig.max_queued` more wait their turn, first come first served; any
   request beyond that is answered 503 with ``Retry-After`` at once, and so is a queued one
   still waiting when its timeout runs out. Load is shed rather than left to grow latency.
4. The endpoint's :func:`authenticate` dependency checks the key (401), charges the key's
   token bucket (429 with ``Retry-After``) and checks the scope (403).
5. A response that has not started within :attr:`~GatewayConfig.timeout` seconds of the
   request's arrival is answered 504. The endpoint is cancelled; a synchronous one, which
   runs in a worker thread that cannot be stopped, finishes in the background and its
   answer is dropped. Its slot stays taken until it does, so that a stuck backend shows as
   503s rather than as unbounded work. A **stream** (SSE) is bounded by the timeout only
   until its first byte: once the response has started it is not cut (a 504 can no longer
   be sent), and runs until its generator ends (``max_tokens`` bounds it) or the client
   goes away.

Keys and tokens are never logged nor echoed in an answer; refusals are logged on the
``rag.serve`` logger with the key's id at most.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from apps.serve.errors import ApiError
from apps.serve.keys import SCOPES, KeyInfo, KeyStore
from apps.serve.limits import GatewayConfig, GatewayMiddleware, RateLimiter, TokenBucket
from rag.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "KEYLESS",
    "SCOPES",
    "Caller",
    "GatewayConfig",
    "GatewayMiddleware",
    "RateLimiter",
    "TokenBucket",
    "authenticate",
    "check_bind",
    "check_collection",
    "install",
]

logger = logging.getLogger("rag.serve")


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's id, scopes and collections (``None``: every collection), or
    the keyless caller of a loopback-only server (``key_id is None``)."""

    key_id: str | None
    scopes: frozenset[str]
    collections: frozenset[str] | None = None

    def may_see(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


#: The caller of a server without keys.
KEYLESS = Caller(key_id=None, scopes=frozenset(SCOPES))


def install(app: FastAPI, config: GatewayConfig | None, keys: KeyStore | None) -> None:
    """Puts the gateway in front of ``app``: sets ``app.state.keys`` (``None``: keyless) and
    ``app.state.gateway``, a per-key rate limiter for :func:`authenticate`, and the
    middleware for body sizes, concurrency and timeouts. Call it once, from the app's
    factory, before the app serves."""
    config = config or GatewayConfig()
    app.state.keys = keys
    app.state.gateway = config
    app.state.rate_limiter = RateLimiter(config.rate_per_minute, burst=config.burst)
    app.add_middleware(GatewayMiddleware, config=config)


def check_bind(host: str, keys: KeyStore | None) -> None:
    """Raises :class:`~rag.errors.ConfigError` when ``host`` is not a loopback address
    (127.0.0.0/8, ::1, localhost) and there is no active key: a server reachable from the
    network must ask for keys. ``rag serve`` calls it before it binds ``host``."""
    if is_loopback(host) or (keys is not None and keys.has_active()):
        return
    raise ConfigError(
        f"refusing to serve on {host!r} without API keys: anyone who can reach it could read "
        "and change every collection. Create one with `rag keys create --name NAME`, or "
        "serve on 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (no name is resolved)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_collection(caller: Caller, collection: str) -> None:
    """Raises 403 when ``caller`` may not see ``collection``."""
    if not caller.may_see(collection):
        raise ApiError(
            403,
            f"this API key may not use the collection {collection!r}",
            type="permission_error",
            code="collection_not_allowed",
        )


def authenticate(scope: str) -> Callable[[Request], Caller]:
    """A FastAPI dependency: the :class:`Caller` of the request, which must hold ``scope``
    (401 without a valid key where keys are required, 429 over the key's rate, 403 without
    the scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}")

    # A plain function: FastAPI runs it in a worker thread, where the key store's SQLite
    # read does not hold up the event loop.
    def dependency(request: Request) -> Caller:
        keys: KeyStore | None = getattr(request.app.state, "keys", None)
        if keys is None:
            host = request.client.host if request.client else "unknown"
            _charge(request, f"address {host}", None)
            return KEYLESS
        info = _key(request, keys)
        _charge(request, f"key {info.id}", info.rate)
        caller = Caller(key_id=info.id, scopes=info.scopes, collections=info.collections)
        if scope not in caller.scopes:
            _refuse(request, f"key {info.id} lacks the {scope} scope")
            raise ApiError(
                403,
                f"this API key lacks the {scope!r} scope",
                type="permission_error",
                code="scope_not_allowed",
            )
        return caller

    return dependency


def _key(request: Request, keys: KeyStore) -> KeyInfo:
    """The active key of the request's bearer token, or 401."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _refuse(request, "no bearer token")
        raise ApiError(
            401,
            "this server needs an API key: send 'Authorization: Bearer <token>'",
            type="authentication_error",
            code="missing_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="ragkit"'},
        )
    info = keys.verify(token)
    if info is None:
        _refuse(request, "an invalid or revoked token")
        raise ApiError(
            401,
            "invalid or revoked API key",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="ragkit", error="invalid_token"'},
        )
    return info


def _charge(request: Request, who: str, rate: float | None) -> None:
    """Takes one token from ``who``'s bucket (once per request), or 429."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or getattr(request.state, "gateway_charged", False):
        return
    request.state.gateway_charged = True
    wait = limiter.take(who, rate)
    if wait > 0:
        retry = max(1, math.ceil(wait))
        _refuse(request, f"{who} is over its rate")
        raise ApiError(
            429,
            f"too many requests: try again in {retry} s",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )


def _refuse(request: Request, why: str) -> None:
    logger.info("refused %s %s: %s", request.method, request.url.path, why)


# --- the per-key rate limit ----------------------------------------------------------------------
