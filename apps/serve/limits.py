"""The gateway's limits: its configuration, per-key token buckets, and the ASGI
middleware that bounds body sizes, requests in flight and queued, and time to the first
byte. :mod:`apps.serve.gateway` installs them and explains the order a request meets them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from apps.serve.errors import ApiError
from rag.errors import ConfigError

logger = logging.getLogger("rag.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class GatewayConfig:
    """The limits of one server. The defaults suit one laptop serving a few clients."""

    #: Requests per minute per key (keyless: per client address); ``None``: no limit. A
    #: key's own rate (``rag keys create --rate``) overrides it, either way.
    rate_per_minute: float | None = 120.0
    #: How many requests a key may make at once after a pause (the bucket's size); never
    #: more than one minute's worth of the key's rate.
    burst: int = 20
    #: Largest request body, in bytes (JSON requests).
    max_body_bytes: int = 1 << 20
    #: Largest upload (``POST /v1/collections/NAME/documents``), in bytes.
    max_upload_bytes: int = 64 << 20
    #: Requests running at once.
    max_in_flight: int = 8
    #: Requests waiting for a slot; one more is answered 503.
    max_queued: int = 32
    #: Seconds from a request's arrival to the start of its response (queue included).
    timeout: float = 60.0
    #: The ``Retry-After`` of a 503 (seconds).
    busy_retry_after: int = 1
    #: Paths that bypass every limit and need no key.
    exempt: frozenset[str] = field(default_factory=lambda: frozenset({"/healthz", "/readyz"}))

    def __post_init__(self) -> None:
        positive = {
            "burst": self.burst,
            "max_body_bytes": self.max_body_bytes,
            "max_upload_bytes": self.max_upload_bytes,
            "max_in_flight": self.max_in_flight,
            "timeout": self.timeout,
            "busy_retry_after": self.busy_retry_after,
        }
        if self.rate_per_minute is not None:
            positive["rate_per_minute"] = self.rate_per_minute
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"the gateway's {name} must be positive, not {value}")
        if self.max_queued < 0:
            raise ConfigError(f"the gateway's max_queued may not be negative ({self.max_queued})")


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` tokens per second; a request takes one. Over
    any span of ``t`` seconds it admits at most ``burst + rate * t`` requests. Not
    thread-safe on its own (:class:`RateLimiter` locks around it)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One :class:`TokenBucket` per caller (a key id, or a client address), thread-safe.
    It keeps the ``max_buckets`` callers seen last; a caller idle long enough to be dropped
    starts again with a full bucket, which is what its bucket would hold anyway after a
    minute's pause."""

    def __init__(
        self,
        rate_per_minute: float | None,
        *,
        burst: int,
        max_buckets: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_minute, self.burst = rate_per_minute, burst
        self.max_buckets, self.clock = max_buckets, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, who: str, rate_per_minute: float | None = None) -> float:
        """Takes a token from ``who``'s bucket (refilled at ``rate_per_minute``, default the
        limiter's; neither: no limit): 0.0 when admitted, else the seconds to wait."""
        per_minute = rate_per_minute or self.rate_per_minute
        if per_minute is None:
            return 0.0
        rate, burst = per_minute / 60.0, max(1.0, min(float(self.burst), per_minute))
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(who)
            if bucket is None or bucket.rate != rate:
                bucket = self._buckets[who] = TokenBucket(rate, burst, now)
            self._buckets.move_to_end(who)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
            return bucket.take(now)


# --- body size, concurrency and timeout ----------------------------------------------------------

_UPLOAD = re.compile(r"^/v1/collections/[^/]+/documents/?$")


class GatewayMiddleware:
    """The body-size limit, the bounded queue and the timeout (see the module's
    docstring), as a pure ASGI middleware: it never buffers a response, so streams pass
    through untouched. Everything here runs on the event loop's thread: no locks."""

    def __init__(self, app: ASGIApp, config: GatewayConfig) -> None:
        self.app, self.config = app, config
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.config.exempt:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        limit = (
            self.config.max_upload_bytes
            if scope["method"] == "POST" and _UPLOAD.match(scope["path"])
            else self.config.max_body_bytes
        )
        declared = _content_length(scope)
        if declared == -1:
            await _reply(send, ApiError(400, "the Content-Length header is not a number"))
            return
        if declared is not None and declared > limit:
            await _reply(send, _too_large(limit))
            return
        admitted = await self._acquire(deadline)
        if not admitted:
            await _reply(send, self._busy())
            return
        exchange = _Exchange(receive, send, limit)
        task = loop.create_task(exchange.run(self.app, scope))
        task.add_done_callback(self._finished)
        started = loop.create_task(exchange.started.wait())
        try:
            await asyncio.wait(
                {task, started},
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            started.cancel()
        if not task.done() and not exchange.started.is_set():
            exchange.closed = True  # whatever the endpoint sends later is dropped
            exchange.cancel(task)
            logger.info(
                "timed out %s %s after %g s", scope["method"], scope["path"], self.config.timeout
            )
            await _reply(
                send,
                ApiError(
                    504,
                    f"the request took longer than {self.config.timeout:g} s",
                    type="server_error",
                    code="timeout",
                ),
            )
            return
        try:
            await task  # the response has started (a stream runs to its end) or is done
        except asyncio.CancelledError:
            task.cancel()
            raise
        except Exception:
            if not exchange.closed:
                raise
            # The gateway answered (413) and the endpoint then failed reading the rest.

    def _busy(self) -> ApiError:
        logger.info(
            "refused a request: %d in flight and %d queued", self._in_flight, len(self._waiters)
        )
        return ApiError(
            503,
            "the server is busy: try again shortly",
            type="server_error",
            code="overloaded",
            headers={"Retry-After": str(self.config.busy_retry_after)},
        )

    async def _acquire(self, deadline: float) -> bool:
        """Takes a slot, waiting in the queue until ``deadline`` if all are taken; False
        when the queue is full or the wait runs out."""
        if self._in_flight < self.config.max_in_flight and not self._waiters:
            self._in_flight += 1
            return True
        if len(self._waiters) >= self.config.max_queued:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), max(0.0, deadline - loop.time()))
        except TimeoutError:
            self._abandon(waiter)
            return False
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        return True

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            self._release()  # handed a slot just as the wait ended: pass it on
        else:
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _release(self) -> None:
        """Hands the slot to the first request still waiting, or frees it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_flight -= 1

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._release()
        if not task.cancelled():
            # Retrieved here so that an endpoint abandoned after a 504 does not end in
            # "exception never retrieved"; ``await task`` re-raises it where one listens.
            task.exception()


class _Exchange:
    """One request's ``receive`` and ``send`` as the endpoint sees them: the body counted
    against the limit (413 past it), and nothing sent once the gateway has answered."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive, self._send, self.limit = receive, send, limit
        self.received = 0
        self.started = asyncio.Event()
        #: The gateway has answered: the endpoint's messages are dropped, and it reads a
        #: disconnect.
        self.closed = False
        self._scope: anyio.CancelScope | None = None

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        with anyio.CancelScope() as self._scope:
            await app(scope, self.receive, self.send)

    def cancel(self, task: asyncio.Task[None]) -> None:
        """Cancels the endpoint through an anyio cancel scope, as Starlette expects: a
        worker thread's wait is shielded from it, so the task (and its slot) lasts until the
        thread returns. A native ``Task.cancel`` would end the task at once and leave the
        thread running with its slot given away."""
        if self._scope is None:
            task.cancel()  # not started yet: nothing runs
        else:
            self._scope.cancel()

    async def receive(self) -> Message:
        if self.closed:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                if not self.started.is_set():
                    self.started.set()
                    await _reply(self._send, _too_large(self.limit))
                self.closed = True
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "http.response.start":
            self.started.set()
        await self._send(message)


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None when not declared, -1 when malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                n = int(value)
            except ValueError:
                return -1
            return n if n >= 0 else -1
    return None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes",
        code="body_too_large",
    )


async def _reply(send: Send, error: ApiError) -> None:
    """Answers with ``error`` in the app's JSON shape (exception handlers do not reach an
    ASGI middleware)."""
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()),
    ]
    if error.status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is not read
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
