"""``rag ingest --engine ray``: read, parse, chunk and embed on a Ray cluster.

Ray Data runs one stage over the items the ingest hands over (:mod:`rag.engines`): a pool
of actors (``map_batches`` with a callable class), each loading the collection's embedder
once, that read a batch of items, chunk them and embed the chunks. The stage is one, not
three, because the chunker counts in the model's tokens: an actor that chunks has the
model's tokenizer loaded anyway, and a file's chunks are embedded where they were cut,
without crossing the cluster twice. An actor that dies is restarted and its batch retried
(``max_restarts``/``max_task_retries``), so a lost worker costs time, not chunks.

Where the records live when many machines work: the workers only compute. The driver (the
``rag ingest`` process) plans what changed before shipping anything, and it alone writes
the chunks and vectors to the store and the records to the collection's ``records.sqlite``,
by the pending/commit protocol of :mod:`rag.indexing` (a source's chunk ids are marked
pending before the write, and its record is committed after the store has them). So a
worker, or the driver, dying anywhere leaves a state that the next run completes or undoes,
exactly as in a local ingest, and the collection's lock still keeps two ingests apart. The
price: every vector crosses to the driver (1.5 KB per 384-d chunk), far below what the
embedding costs per chunk.

The sources must be readable from the workers: a folder must be at the same path on every
node (a shared file system); the source object itself is shipped to them (so it must be
picklable).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag.engines import ItemResult, Recipe, WorkItem, read_item
from rag.errors import ConfigError, EmbeddingError, IngestError, MissingDependencyError
from rag.source import Source, SourceItem

logger = logging.getLogger(__name__)

#: How long connecting to a cluster may take before the ingest gives up with an error.
CONNECT_TIMEOUT_S = 30.0
#: Backends that cannot use a GPU, so ``num_gpus`` would only hold one idle.
CPU_ONLY_BACKENDS = frozenset({"hashing", "onnx", "onnx-int8"})


@dataclass(frozen=True)
class RaySettings:
    """Where and with what the Ray stage runs.

    ``workers``: embedding actors (default: as many as the cluster's CPUs, or GPUs when
    ``num_gpus`` is set, allow); ``batch_size``: source items per batch an actor takes at a
    time; ``num_cpus``/``num_gpus``: what each actor reserves; ``address``: a running
    cluster (``auto``, ``host:port`` or ``ray://host:port``), or ``None`` for a Ray started
    on this machine for the ingest (or ``RAY_ADDRESS`` when set)."""

    address: str | None = None
    workers: int | None = None
    batch_size: int = 16
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    connect_timeout: float = CONNECT_TIMEOUT_S

    def check(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--ray-workers must be at least 1, not {self.workers}")
        if self.batch_size < 1:
            raise ConfigError(f"--ray-batch-size must be at least 1, not {self.batch_size}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("--ray-num-cpus and --ray-num-gpus cannot be negative")
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ConfigError(
                "an embedding actor needs some CPU or GPU: give --ray-num-cpus or --ray-num-gpus"
            )


@dataclass
class RunStats:
    """What the last run saw come back: the actors (process ids) that embedded, and the
    size of each batch (items) they were given."""

    actors: set[int] = field(default_factory=set)
    batch_items: list[int] = field(default_factory=list)


class RayEngine:
    """The ``ray`` ingest engine (:class:`rag.engines.Engine`)."""

    name = "ray"

    def __init__(self, settings: RaySettings | None = None) -> None:
        self.settings = settings or RaySettings()
        self.settings.check()
        self.stats = RunStats()

    def compute(
        self, source: Source, work: Sequence[WorkItem], recipe: Recipe
    ) -> Iterator[ItemResult]:
        if not work:
            return
        s = self.settings
        if s.num_gpus > 0 and recipe.embed_backend in CPU_ONLY_BACKENDS:
            raise ConfigError(
                f"--ray-num-gpus: the {recipe.embed_backend} embedding backend runs on CPUs "
                "only; use --embed-backend torch for GPU workers, or leave --ray-num-gpus out"
            )
        try:
            shipped_source = pickle.dumps(source)
        except Exception as e:
            raise ConfigError(
                f"the {getattr(source, 'name', type(source).__name__)} source cannot be sent "
                f"to Ray workers ({e}); ingest it without --engine ray"
            ) from e
        address = s.address or os.environ.get("RAY_ADDRESS") or None
        if address is None or _is_loopback(address):
            # A Ray of our own, or one on this machine only: every Ray port on loopback
            # (Ray otherwise listens on the machine's address). Read when Ray is imported.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = _import_ray()
        started_here = _connect(ray, s)
        self.stats = RunStats()
        try:
            yield from self._run(ray, shipped_source, list(work), recipe)
        finally:
            if started_here:
                ray.shutdown()

    def _run(
        self, ray: Any, source: bytes, work: list[WorkItem], recipe: Recipe
    ) -> Iterator[ItemResult]:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the ingest draws its own, fed by what comes back
        ctx.print_on_execution_start = False
        chatty = logging.getLogger("ray.data")  # its execution plan and timings, as INFO
        level = chatty.level
        chatty.setLevel(logging.ERROR)
        try:
            yield from self._stream(ray, source, work, recipe)
        finally:
            chatty.setLevel(level)

    def _stream(
        self, ray: Any, source: bytes, work: list[WorkItem], recipe: Recipe
    ) -> Iterator[ItemResult]:
        s = self.settings
        workers = s.workers or _default_workers(ray, s)
        rows = [
            {"id": w.item.id, "size": w.item.size, "mtime": w.item.mtime, "prev": w.previous_hash}
            for w in work
        ]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // s.batch_size)))
        ds = ds.map_batches(
            EmbedActor,
            fn_constructor_kwargs={
                "source": source,
                "recipe": recipe,
                "threads": max(1, round(s.num_cpus)),
                "gpus": s.num_gpus,
            },
            batch_size=s.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=s.num_cpus,
            num_gpus=s.num_gpus,
            # Ray Data's own defaults for an actor pool restart a dead actor and run its batch
            # again (max_restarts=-1, max_task_retries=-1): lost work, never lost chunks.
        )
        items = {w.item.id: w.item for w in work}
        partial: dict[str, list[tuple[int, Any, np.ndarray, float]]] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            self._count(batch)
            for row in zip(*(batch[k] for k in _COLUMNS), strict=True):
                result = _collect(dict(zip(_COLUMNS, row, strict=True)), items, partial)
                if result is not None:
                    yield result

    def _count(self, batch: dict[str, np.ndarray]) -> None:
        seen: dict[tuple[int, int], set[str]] = {}
        for pid, call, item in zip(batch["actor"], batch["call"], batch["item"], strict=True):
            seen.setdefault((int(pid), int(call)), set()).add(str(item))
        for (pid, _), ids in seen.items():
            self.stats.actors.add(pid)
            self.stats.batch_items.append(len(ids))


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # the [data] extra
    except ImportError as e:
        raise MissingDependencyError("--engine ray", "ray[data]", "ray") from e
    return ray


def _connect(ray: Any, s: RaySettings) -> bool:
    """Connect to the cluster (or start a Ray here); whether this call started the
    connection (and so ends it). Never waits past ``s.connect_timeout``."""
    if ray.is_initialized():
        return False
    address = s.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "auto" and address != "local":
        _reachable(address, s.connect_timeout)
    outcome: list[BaseException | None] = []

    def init() -> None:
        try:
            ray.init(
                # No address: a Ray of our own, never one that happens to run on this machine
                # (ray.init() alone would join a cluster that `ray start` left running).
                address=address or "local",
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
                include_dashboard=False if not address else None,
            )
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    if not address or address == "local":
        # A Ray of our own, started here: no network wait to bound, and a Ray started from
        # another thread loses its object store connection when that thread ends.
        init()
        if outcome[0] is not None:
            raise IngestError(f"cannot start a local Ray: {outcome[0]}") from outcome[0]
        return True

    # In a thread, to bound the wait; Ray then warns that it cannot set its SIGTERM handler
    # there, which does not matter to a driver: quiet it.
    quiet = logging.getLogger("ray")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    thread = threading.Thread(target=init, name="rag-ray-connect", daemon=True)
    thread.start()
    thread.join(s.connect_timeout)
    quiet.setLevel(level)
    if not outcome:
        raise IngestError(
            f"the Ray cluster at {address} did not answer within {s.connect_timeout:.0f} s"
        )
    if outcome[0] is not None:
        e = outcome[0]
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise IngestError(f"cannot connect to {where}: {e}") from e
    return True


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _reachable(address: str, timeout: float) -> None:
    """A TCP connection to the cluster's address, or a clear error, within ``timeout``
    (``ray.init`` would keep retrying an address that does not answer)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"--ray-address takes auto, HOST:PORT or ray://HOST:PORT, not {address!r}"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 10.0)):
            pass
    except OSError as e:
        raise IngestError(
            f"the Ray cluster at {address} cannot be reached: {e.strerror or e}"
        ) from e


def _default_workers(ray: Any, s: RaySettings) -> int:
    """As many actors as the cluster's resources hold at once (at least one)."""
    resources = ray.cluster_resources()
    if s.num_gpus > 0:
        return max(1, int(resources.get("GPU", 0) // s.num_gpus))
    return max(1, int(resources.get("CPU", 1) // s.num_cpus))


#: The columns of the stage's output: one row per chunk, or one per item without chunks.
_COLUMNS = (
    "item",
    "kind",
    "n",
    "pos",
    "hash",
    "reason",
    "chunk",
    "vector",
    "seconds",
    "actor",
    "call",
)


def _collect(
    row: dict[str, Any],
    items: dict[str, SourceItem],
    partial: dict[str, list[tuple[int, Any, np.ndarray, float]]],
) -> ItemResult | None:
    """Gather an item's rows (its chunks may come back in more than one block); the item's
    result once all of them are here."""
    ident = str(row["item"])
    item = items[ident]
    kind = str(row["kind"])
    if kind == "failed":
        from rag.types import Failure

        return ItemResult(item, failure=Failure(ident, str(row["reason"])))
    if kind == "skipped":
        from rag.types import Skipped

        return ItemResult(item, skipped=Skipped(ident, str(row["reason"])))
    if kind == "same":
        return ItemResult(item, content_hash=str(row["hash"]))
    got = partial.setdefault(ident, [])
    chunk = pickle.loads(row["chunk"])
    got.append((int(row["pos"]), chunk, row["vector"], float(row["seconds"])))
    if len(got) < int(row["n"]):
        return None
    del partial[ident]
    got.sort(key=lambda g: g[0])
    return ItemResult(
        item,
        content_hash=str(row["hash"]),
        chunks=[g[1] for g in got],
        vectors=np.stack([np.frombuffer(g[2], dtype=np.float32) for g in got]),
        embed_seconds=sum(g[3] for g in got),
    )


class EmbedActor:
    """One embedding actor: loads the collection's embedder once, then reads, chunks and
    embeds batch after batch of items."""

    def __init__(self, *, source: bytes, recipe: Recipe, threads: int, gpus: float = 0) -> None:
        # As many threads as CPUs reserved: actors sharing a node do not oversubscribe it.
        os.environ.setdefault("RAG_ONNX_THREADS", str(threads))
        if recipe.embed_backend == "torch":
            import torch

            torch.set_num_threads(threads)
        self.source: Source = pickle.loads(source)
        self.embedder = recipe.embedder()
        if gpus > 0 and getattr(self.embedder, "device", "cpu") == "cpu":
            # Holding a GPU while embedding on the CPU would be an option accepted and ignored.
            raise EmbeddingError(
                f"--ray-num-gpus {gpus}: this actor's PyTorch sees no GPU (a CPU-only torch "
                "build, or a node without one); install a CUDA build of torch on the workers"
            )
        self.chunker = recipe.chunker(self.embedder)
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        self.calls += 1
        out: dict[str, list[Any]] = {k: [] for k in _COLUMNS}

        def row(
            ident: str,
            kind: str,
            *,
            n: int = 0,
            pos: int = 0,
            content_hash: str = "",
            reason: str = "",
            chunk: bytes = b"",
            vector: bytes = b"",
            seconds: float = 0.0,
        ) -> None:
            values = (
                ident,
                kind,
                n,
                pos,
                content_hash,
                reason,
                chunk,
                vector,
                seconds,
                os.getpid(),
                self.calls,
            )
            for k, v in zip(_COLUMNS, values, strict=True):
                out[k].append(v)

        results = []
        for ident, size, mtime, prev in zip(
            batch["id"], batch["size"], batch["mtime"], batch["prev"], strict=True
        ):
            work = WorkItem(SourceItem(str(ident), int(size), float(mtime)), str(prev))
            results.append(read_item(self.source, work, self.chunker.chunk))
        texts = [c.text for r in results if r.chunks for c in r.chunks]
        t0 = time.perf_counter()
        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32) if texts else None
        share = (time.perf_counter() - t0) / max(1, len(texts))
        at = 0
        for r in results:
            ident = r.item.id
            if r.failure is not None:
                row(ident, "failed", reason=r.failure.reason)
            elif r.skipped is not None:
                row(ident, "skipped", reason=r.skipped.reason)
            elif r.chunks is None:
                row(ident, "same", content_hash=r.content_hash)
            else:
                assert vectors is not None
                for pos, c in enumerate(r.chunks):
                    row(
                        ident,
                        "chunk",
                        n=len(r.chunks),
                        pos=pos,
                        content_hash=r.content_hash,
                        chunk=pickle.dumps(c),
                        vector=vectors[at].tobytes(),
                        seconds=share,
                    )
                    at += 1
        return {
            k: np.array(v, dtype=object) if k in ("chunk", "vector") else np.array(v)
            for k, v in out.items()
        }
