"""Dynamic batching for ``rag serve``: concurrent searches of one collection share one call
to its embedding model and one to its vector store.

A :class:`MicroBatcher` collects items from callers in any thread. The first item of a batch
waits at most ``max_wait_ms`` for companions, a batch of ``max_batch`` items goes at once,
and one worker thread runs the batches one after another, so that while it works the next
batch gathers: under load, batches form without anyone waiting for the timer. The timer is
only worth its wait when requests come together: after a batch of one (no company came),
the next item goes at once, and waiting resumes once a batch has found company again (items
queue up while the worker is busy). A lone client therefore pays no wait. Each caller gets
its own result or its own exception. :meth:`MicroBatcher.close` drains: what was submitted
is still answered.

A :class:`SearchBatcher` is one collection's (``rag serve`` keeps one per collection, see
:class:`apps.serve.service.Service`). What it batches is a dense search without MMR or a
re-ranker, the default ``/v1/search``: the queries are embedded, then searched with one
``search_many`` per ``(k, where)`` (:func:`rag.store.search_many`; FAISS answers a batch in
one locked call). The hits are the unbatched path's (``Collection.search``), ids and scores
alike, as long as each query gets the vector it gets alone. So the queries are embedded in
one model call (per group of similar token length, so that little of the model's work goes
on padding) only where the embedder's vectors do not depend on their companions: the
batcher checks once, on a few probe texts, that they come out the same alone and together
(to 1e-5; the hashing and ONNX fp32 backends are exact, torch differs in the last float
bits). A dynamically quantized model (``onnx-int8``, the default without VNNI) scales each call's
activations together, so its vectors move with their companions (cosine 0.99, enough to
reorder a top 10): each query is then embedded on its own, and only the store's work is
batched. BM25, hybrid, MMR and re-ranked searches take the unbatched path: their
per-query work is not the model's.

A failure stays with the request that caused it: when a batch's model call or store call
fails, its items are retried one by one, and each caller gets its own outcome.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from apps.serve.errors import ApiError
from rag.errors import ConfigError
from rag.store import search_many

if TYPE_CHECKING:
    from rag.collection import Collection
    from rag.filters import Filter
    from rag.types import Hit

logger = logging.getLogger("rag.serve")

T = TypeVar("T")
R = TypeVar("R")

#: A length group of a batch's queries holds texts of at most this many times the shortest
#: one's tokens (plus two): padding a short text to a long one costs the model the difference.
LENGTH_SLACK = 1.25
#: Texts of different lengths (so that a batch of them is padded) that an embedder must give
#: the same vectors alone and together, to 1e-5, for its batches to be embedded together.
PROBE_TEXTS = (
    "fever",
    "Does vitamin D lower the risk of fractures in older adults?",
    "A protein that binds DNA can regulate the expression of many genes at once, and "
    "mutations in it are linked to several diseases of the immune system in children.",
    "How are transformer models trained?",
)
PROBE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class BatchConfig:
    """How ``rag serve`` batches concurrent searches (``--batch-max``, ``--batch-wait-ms``,
    ``--no-batching``)."""

    #: Batch dense searches at all; off, every request embeds and searches on its own.
    enabled: bool = True
    #: The most requests in one batch; a full batch goes at once.
    max_batch: int = 32
    #: How long the first request of a batch waits for companions (milliseconds).
    max_wait_ms: float = 5.0
    #: Requests waiting for a batch; one more is answered 503 (the gateway's own queue
    #: usually sheds load first).
    max_queue: int = 1024
    #: Embed a batch's queries in one model call per length group (True), or each alone
    #: (False: exactly the unbatched vectors on any model, only the store's work batched);
    #: ``None``: together where a probe shows the embedder's vectors do not depend on their
    #: companions (see the module's docstring).
    embed_together: bool | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.max_batch, int) and self.max_batch >= 1):
            raise ConfigError(f"the batch size must be a positive integer, not {self.max_batch}")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ConfigError(f"the batch wait must be 0 ms or more, not {self.max_wait_ms}")
        if not (isinstance(self.max_queue, int) and self.max_queue >= 1):
            raise ConfigError(f"the batch queue must hold at least 1, not {self.max_queue}")


class _Item(Generic[T, R]):
    __slots__ = ("at", "future", "value")

    def __init__(self, value: T) -> None:
        self.value = value
        self.at = time.monotonic()
        self.future: Future[R] = Future()


class MicroBatcher(Generic[T, R]):
    """Runs ``process`` on batches of submitted items in one worker thread.

    ``process(values)`` returns one outcome per value, in order: a result, or an
    ``Exception`` instance for that value's caller. If it raises, every caller of the batch
    gets that exception."""

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R | Exception]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        name: str = "batcher",
    ) -> None:
        self._process = process
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self._queue: deque[_Item[T, R]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._batches = 0
        self._items = 0
        self._largest = 0
        self._waited = 0  # batches that waited for the timer
        self._company = True  # the last batch held more than one item (or none ran yet)
        self._worker = threading.Thread(target=self._run, name=f"batch-{name}", daemon=True)
        self._worker.start()

    def submit(self, value: T) -> Future[R]:
        """Queues ``value``; its future holds the outcome. Raises a 503 :class:`ApiError`
        when the queue is full or the batcher is closed."""
        item: _Item[T, R] = _Item(value)
        with self._cond:
            if self._closing:
                raise ApiError(
                    503,
                    "the server is shutting down",
                    type="server_error",
                    code="shutting_down",
                )
            if len(self._queue) >= self.max_queue:
                raise ApiError(
                    503,
                    "the server is busy: try again shortly",
                    type="server_error",
                    code="overloaded",
                    headers={"Retry-After": "1"},
                )
            self._queue.append(item)
            # Wake the worker only when it may be idle (a first item) or a batch is full; it
            # sleeps until the first item's deadline otherwise.
            if len(self._queue) == 1 or len(self._queue) >= self.max_batch:
                self._cond.notify()
        return item.future

    def __call__(self, value: T) -> R:
        """Submits ``value`` and waits for its outcome (from a worker thread)."""
        return self.submit(value).result()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "batches": self._batches,
                "requests": self._items,
                "mean_batch": round(self._items / self._batches, 2) if self._batches else 0.0,
                "largest": self._largest,
                "waited": self._waited,
            }

    def close(self, timeout: float | None = None) -> None:
        """Stops taking items, answers those queued, and waits for the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # --- the worker --------------------------------------------------------------------------

    def _next_batch(self) -> list[_Item[T, R]] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = self._queue[0].at + self.max_wait
            waited = False
            while self._company and len(self._queue) < self.max_batch and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                waited = True
                self._cond.wait(left)
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._company = n > 1
            self._batches += 1
            self._items += n
            self._largest = max(self._largest, n)
            self._waited += waited
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                outcomes = list(self._process([item.value for item in batch]))
                if len(outcomes) != len(batch):
                    raise RuntimeError(
                        f"batch {self.name}: {len(outcomes)} outcomes for {len(batch)} requests"
                    )
            except Exception as e:
                logger.exception("batch %s failed", self.name)
                outcomes = [e] * len(batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)


# --- searches ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseSearch:
    """One dense search: what ``Collection.search(query, k=k, where=where)`` is asked."""

    query: str
    k: int
    where: Filter | None = None


class SearchBatcher:
    """Batches one collection's dense searches (see the module's docstring)."""

    def __init__(self, collection: Collection, config: BatchConfig, *, name: str) -> None:
        self.collection = collection
        self.config = config
        self.name = name
        self._together = config.embed_together
        self._batcher: MicroBatcher[DenseSearch, tuple[list[Hit], np.ndarray]] = MicroBatcher(
            self._search,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            name=name,
        )

    def search(self, query: str, *, k: int, where: Filter | None = None) -> list[Hit]:
        """The ``k`` best passages for ``query``, with the companions it finds waiting."""
        return self._batcher(DenseSearch(query, k, where))[0]

    def search_vector(
        self, query: str, *, k: int, where: Filter | None = None
    ) -> tuple[list[Hit], np.ndarray]:
        """:meth:`search`'s hits and the query's vector (for the query log's drift)."""
        return self._batcher(DenseSearch(query, k, where))

    def stats(self) -> dict[str, Any]:
        return self._batcher.stats()

    def close(self) -> None:
        self._batcher.close()

    # --- one batch ---------------------------------------------------------------------------

    def _search(
        self, requests: list[DenseSearch]
    ) -> list[tuple[list[Hit], np.ndarray] | Exception]:
        vectors, outcomes = self._embed([r.query for r in requests])
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            if outcomes[i] is None:
                groups.setdefault(_group_key(r, i), []).append(i)
        store = self.collection.store
        for rows in groups.values():
            k, where = requests[rows[0]].k, requests[rows[0]].where
            try:
                found = search_many(store, vectors[rows], k=k, where=where)
            except Exception:
                found = None  # one row's problem is not its companions': one by one
            for n, i in enumerate(rows):
                if found is not None:
                    outcomes[i] = found[n]
                    continue
                try:
                    outcomes[i] = store.search(vectors[i], k=k, where=where)
                except Exception as e:
                    outcomes[i] = e
        return [
            RuntimeError("not searched")
            if o is None
            else o
            if isinstance(o, Exception)
            else (o, vectors[i])
            for i, o in enumerate(outcomes)
        ]

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, list[Any]]:
        """The texts' vectors as ``Collection.search`` would make them, and for each text
        ``None`` or the exception its embedding raised (its vector row is then zeros)."""
        embedder = self.collection.embedder
        vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
        failed: list[Any] = [None] * len(texts)
        for group in self._length_groups(texts):
            if len(group) > 1:
                try:
                    vectors[group] = embedder.embed([texts[i] for i in group])
                    continue
                except Exception:
                    pass  # one text's failure is not its group's: one by one
            for i in group:
                try:
                    vectors[i] = embedder.embed_query(texts[i])
                except Exception as e:
                    failed[i] = e
        return vectors, failed

    def embeds_together(self) -> bool:
        """Whether a batch's queries go through the model together (probed once when
        :attr:`BatchConfig.embed_together` is ``None``)."""
        if self._together is None:
            embedder = self.collection.embedder
            try:
                alone = np.stack([embedder.embed_query(t) for t in PROBE_TEXTS])
                together = np.asarray(embedder.embed(list(PROBE_TEXTS)), dtype=np.float32)
                gap = float(np.abs(alone - together).max())
            except Exception as e:  # the searches will meet the problem and report it
                logger.warning("batch %s: the embedder probe failed: %s", self.name, e)
                return False
            self._together = gap <= PROBE_TOLERANCE
            logger.info(
                "batch %s: %s embeds texts %s (largest gap alone vs together %.2g)",
                self.name,
                embedder.id,
                "together" if self._together else "one by one",
                gap,
            )
        return self._together

    def _length_groups(self, texts: list[str]) -> list[list[int]]:
        """The texts' indices in groups of similar token length (each alone when the
        batch's queries are embedded one by one)."""
        if len(texts) == 1 or not self.embeds_together():
            return [[i] for i in range(len(texts))]
        try:
            lengths = list(self.collection.embedder.count_tokens(texts))
        except Exception:
            return [list(range(len(texts)))]
        groups: list[list[int]] = []
        for i in sorted(range(len(texts)), key=lambda j: lengths[j]):
            if groups and lengths[i] <= lengths[groups[-1][0]] * LENGTH_SLACK + 2:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups


def _group_key(request: DenseSearch, index: int) -> Any:
    """Requests that may share one ``search_many`` call: the same ``k`` and filter."""
    try:
        hash(request.where)
    except TypeError:
        return ("alone", index)
    return (request.k, request.where)
