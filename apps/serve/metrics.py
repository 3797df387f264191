"""Prometheus metrics for ``rag serve`` at ``GET /metrics`` (text exposition format), for
users who already run Prometheus and Grafana. Every app has its own registry.

* ``ragkit_http_requests_total{route, method, status}`` and
  ``ragkit_http_request_seconds{route, method}``: every request but ``/metrics`` itself, by
  the route's path template (``/v1/collections/{name}/documents``; ``other`` for a path no
  route matched), whatever answered it (the gateway's 401/413/429/503 included). A stream is
  timed to its last byte.
* ``ragkit_stage_seconds{collection, stage}``: where a request's time went, per collection:
  ``search`` (a ``/v1/search`` or MCP search: embedding and store, batched or not),
  ``rewrite``, ``retrieve``, ``generate`` and ``first_token`` (a chat completion's stages,
  from :attr:`rag.generation.Answer.timings`).
* ``ragkit_collection_requests_total{collection, endpoint, outcome}``: per collection,
  ``ok`` or the error's class name.
* ``ragkit_batches_total``, ``ragkit_batched_requests_total`` and
  ``ragkit_batch_largest{collection}``: the dynamic batcher's counts
  (:meth:`apps.serve.service.Service.batch_stats`), read at each scrape.

With API keys, ``/metrics`` needs a key with the ``read`` scope, like the API
(Prometheus's ``authorization`` setting sends it); without keys it is open on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Bucket bounds in seconds: a search takes milliseconds, a local model's answer seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Chat stages recorded from ``Answer.timings``.
CHAT_STAGES = ("rewrite", "retrieve", "generate", "first_token")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """One server's metrics and their registry."""

    def __init__(self, batch_stats: Callable[[], Mapping[str, Mapping[str, object]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ragkit_http_requests",
            "HTTP requests answered, by route, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragkit_http_request_seconds",
            "Time from a request's arrival to its last byte, by route and method",
            ("route", "method"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "ragkit_stage_seconds",
            "Time spent per stage of a search or an answer, by collection",
            ("collection", "stage"),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.outcomes = Counter(
            "ragkit_collection_requests",
            "Searches and answers per collection, by endpoint and outcome",
            ("collection", "endpoint", "outcome"),
            registry=self.registry,
        )
        self.registry.register(_BatchCollector(batch_stats))

    def stage(self, collection: str, stage: str, seconds: float) -> None:
        self.stages.labels(collection, stage).observe(max(seconds, 0.0))

    def answer(self, collection: str, timings: Mapping[str, float]) -> None:
        """A chat answer's stage timings (``Answer.timings``)."""
        for stage in CHAT_STAGES:
            if stage in timings:
                self.stage(collection, stage, float(timings[stage]))

    def outcome(self, collection: str, endpoint: str, error: BaseException | None) -> None:
        self.outcomes.labels(
            collection, endpoint, "ok" if error is None else type(error).__name__
        ).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _BatchCollector:
    """The batcher's counters, read from the service when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], Mapping[str, Mapping[str, object]]]) -> None:
        self._stats = stats

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Any]:
        batches = CounterMetricFamily(
            "ragkit_batches", "Batches of searches run, by collection", labels=["collection"]
        )
        requests = CounterMetricFamily(
            "ragkit_batched_requests",
            "Searches that went through the batcher, by collection",
            labels=["collection"],
        )
        largest = GaugeMetricFamily(
            "ragkit_batch_largest", "The largest batch so far, by collection", labels=["collection"]
        )
        for collection, s in sorted(self._stats().items()):
            batches.add_metric([collection], float(s.get("batches", 0) or 0))  # type: ignore[arg-type]
            requests.add_metric([collection], float(s.get("requests", 0) or 0))  # type: ignore[arg-type]
            largest.add_metric([collection], float(s.get("largest", 0) or 0))  # type: ignore[arg-type]
        yield from (batches, requests, largest)


class MetricsMiddleware:
    """Counts and times every request by its route's path template (pure ASGI, so that a
    stream is timed to its end and the gateway's own refusals are counted)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, skip: tuple[str, ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.skip:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)
