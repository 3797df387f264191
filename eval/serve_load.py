"""Closed-loop HTTP load on loopback, for :mod:`eval.serve_bench`.

Each client holds one keep-alive HTTP/1.1 connection and sends its next request when its
last one is answered. The client is a minimal one on asyncio streams rather than httpx:
the load generator shares the machine's cores with the server it measures, and costs it
less CPU per request this way. It speaks just enough HTTP for a uvicorn server (a
``Content-Length`` or chunked body; ``Connection: close``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from eval.metrics import percentiles

#: Seconds one request may take before it counts as an error.
REQUEST_TIMEOUT = 120.0
#: The longest a client waits after a 503 before its next request (its Retry-After, capped).
MAX_BACKOFF = 1.0


class Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use and again after a close."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)``; headers' names lower-cased."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            writer.write(head.encode("ascii") + body)
            line = await reader.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            status = int(line.split()[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                data = bytearray()
                while size := int((await reader.readline()).split(b";")[0], 16):
                    data += await reader.readexactly(size)
                    await reader.readline()
                await reader.readline()
                payload = bytes(data)
            else:
                payload = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class Level:
    """What one load level measured."""

    clients: int
    latencies: list[float] = field(default_factory=list)
    busy: int = 0  # 503 answers
    errors: int = 0  # any other failure: another status, a timeout, a broken connection
    first_error: str | None = None
    seconds: float = 0.0
    #: Answer bodies of the successful requests, by request number.
    payloads: dict[int, bytes] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies)
        ms = {k: round(v * 1000, 1) for k, v in percentiles(self.latencies).items()}
        return {
            "clients": self.clients,
            "ok": ok,
            "http_503": self.busy,
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_ms": ms["p50"],
            "p95_ms": ms["p95"],
            "p99_ms": ms["p99"],
            "rps": round(ok / self.seconds, 1) if self.seconds > 0 else 0.0,
            "seconds": round(self.seconds, 2),
        }


async def drive(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    *,
    clients: int,
    requests: int,
    time_cap: float,
    keep: bool = False,
    stop: threading.Event | None = None,
) -> Level:
    """``clients`` closed-loop clients POSTing ``bodies`` (request i sends body i modulo
    their number) until ``requests`` are sent or ``time_cap`` seconds have passed; requests
    in flight then finish. A 503 is counted, and its client waits the answer's
    Retry-After (at most :data:`MAX_BACKOFF` s), as a polite client does. ``keep`` keeps
    the successful answers' bodies; ``stop``, once set, ends the level early."""
    level = Level(clients)
    numbers = itertools.count()
    start = time.perf_counter()
    stop_at = start + time_cap

    def failed(why: str) -> None:
        level.errors += 1
        level.first_error = level.first_error or why

    async def client() -> None:
        conn = Connection(host, port)
        try:
            while (
                (i := next(numbers)) < requests
                and time.perf_counter() < stop_at
                and not (stop is not None and stop.is_set())
            ):
                t0 = time.perf_counter()
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                    # cancellation (Ctrl-C) that meets a request just done.
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        status, headers, payload = await conn.request(
                            "POST", path, bodies[i % len(bodies)]
                        )
                except (OSError, TimeoutError, ValueError, IndexError) as e:
                    failed(f"{type(e).__name__}: {e}")
                    continue
                took = time.perf_counter() - t0
                if status == 200:
                    level.latencies.append(took)
                    if keep:
                        level.payloads[i] = payload
                elif status == 503:
                    level.busy += 1
                    try:
                        wait = float(headers.get("retry-after", "1"))
                    except ValueError:
                        wait = 1.0
                    left = stop_at - time.perf_counter()
                    await asyncio.sleep(max(0.0, min(wait, MAX_BACKOFF, left)))
                else:
                    failed(f"HTTP {status}: {payload[:200].decode('utf-8', 'replace')}")
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    level.seconds = time.perf_counter() - start
    return level


async def get(host: str, port: int, path: str) -> int:
    """The status of ``GET path`` (a fresh connection)."""
    conn = Connection(host, port)
    try:
        async with asyncio.timeout(10):
            status, _, _ = await conn.request("GET", path)
        return status
    finally:
        conn.close()
