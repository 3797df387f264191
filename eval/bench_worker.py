"""One benchmark job, (store configuration, dataset, N), in a process of its own.

Run by ``eval.bench`` as ``python -m eval.bench_worker JOB.json``; never by hand. Its own
process keeps peak memory per configuration and lets the parent kill it at its budget.

Phases, each timed separately:

1. load: ``store.upsert`` in batches of ``batch`` rows (ids are UUIDs from the row index,
   empty text, metadata ``{"bucket": row % 100}``). Engines that index while inserting
   (FAISS, Chroma, pgvector with the index already there) build here.
2. build: the adapter's public build step when it has one (``build_index()``, or
   ``optimize()`` for Qdrant's in-process engine, which also builds every 20k points
   during the load), then ``close()`` (FAISS writes its index snapshot there).
3. search, per value of the configuration's search parameter: reopen the store with that
   option, 20 warm-up queries, then serial queries (``k=10``) timed one by one, capped by
   query count and by ``search_seconds``. Recall is computed afterwards against the
   exact ground truth, with exact scores read from the dataset for tie handling.
4. filtered search at the default parameter, 1% and 10% selectivity, against the filtered
   exact ground truth.
5. throughput at the default parameter with 1, 2, 4 client threads, each for
   ``throughput_seconds``. In-process engines share one store object between threads (the
   way an application server would), so the figure includes the adapter's own locking
   and the GIL; pgvector clients each open their own store (their own connection).

Memory: the kernel's peak RSS (``VmHWM``, reset at each phase through
``/proc/self/clear_refs``) per phase, and the anonymous RSS sampled every 0.2 s. Base
vectors are read with ``pread``, not memory-mapped, so they never count in RSS. For an
embedded PostgreSQL the proportional set size (PSS) of the postmaster and all its children
is sampled every second: PSS splits shared buffers between the processes that touch them
instead of counting them once per backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench_data import FILTERS, Dataset, bucket, npy_layout
from eval.bench_metrics import mean_recall, percentiles
from eval.bench_stores import SPECS
from rag.filters import parse
from rag.store import StoreConfig, store_class
from rag.types import Chunk

COLLECTION = "bench"
K = 10
WARMUP = 20


def row_id(row: int) -> str:
    return str(uuid.UUID(int=row + 1))


def id_row(chunk_id: str) -> int:
    return uuid.UUID(chunk_id).int - 1


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def du_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


def server_processes(store_dir: Path) -> list[Any]:
    """The embedded PostgreSQL postmaster whose data lives under ``store_dir``, with its
    children."""
    import psutil

    want = str(store_dir.resolve())
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["name"] == "postgres" and "-D" in cmd and want in " ".join(cmd):
                return [proc, *proc.children(recursive=True)]
        except (psutil.Error, OSError):
            continue
    return []


class Monitor(threading.Thread):
    """Samples memory and writes progress lines for the parent."""

    def __init__(self, progress: Path, store_dir: Path, pg: bool) -> None:
        super().__init__(daemon=True)
        self.progress = open(progress, "a", buffering=1)  # noqa: SIM115 (closed in stop)
        self.store_dir = store_dir
        self.pg = pg
        self.phase = "start"
        self.done = 0
        self.total = 0
        self.anon_peak: dict[str, float] = {}
        self.server_peak: dict[str, float] = {}
        self.server_mb = 0.0
        self.loads: list[float] = []  # the machine's 1-minute load average, every second
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._last_server = 0.0

    def set_phase(self, phase: str, total: int = 0) -> None:
        with self._lock:
            self.phase, self.done, self.total = phase, 0, total
        self.write(force=True)

    def advance(self, done: int) -> None:
        self.done = done
        self.write()

    def _sample_server(self) -> None:
        import psutil

        total = 0.0
        for proc in server_processes(self.store_dir):
            try:
                total += proc.memory_full_info().pss
            except (psutil.Error, OSError):
                continue
        self.server_mb = total / 2**20
        if total:
            p = self.phase
            self.server_peak[p] = max(self.server_peak.get(p, 0.0), self.server_mb)

    def run(self) -> None:
        while not self._halt.wait(0.2):
            anon = _status_kb("RssAnon") / 1024
            p = self.phase
            self.anon_peak[p] = max(self.anon_peak.get(p, 0.0), anon)
            now = time.monotonic()
            if now - self._last_server >= 1.0:
                self._last_server = now
                self.loads.append(os.getloadavg()[0])
                if self.pg:
                    self._sample_server()
            self.write()

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < 1.0:
            return
        self._last_write = now
        line = {
            "t": round(time.time(), 2),
            "phase": self.phase,
            "done": self.done,
            "total": self.total,
            "rss_mb": round(_status_kb("VmRSS") / 1024, 1),
            "server_mb": round(self.server_mb, 1),
        }
        with self._lock:
            self.progress.write(json.dumps(line) + "\n")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.write(force=True)
        self.progress.close()


def read_rows(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    """Base vectors of ``rows`` by positioned reads (no memory map)."""
    out = np.empty((len(rows), ds.dim), dtype=np.float32)
    _, offset = npy_layout(ds.base_path)
    row_bytes = ds.dim * 4
    with open(ds.base_path, "rb") as f:
        for i, r in enumerate(rows):
            buf = os.pread(f.fileno(), row_bytes, offset + int(r) * row_bytes)
            out[i] = np.frombuffer(buf, dtype=np.float32)
    return out


def score_found(
    ds: Dataset, queries: np.ndarray, found: list[list[int]], keep: Any = None
) -> list[list[float]]:
    """Exact inner products of each query with the rows it got back. With ``keep`` (a
    filter's row predicate), a row outside the filter scores ``-inf``: a store that ignored
    the filter gets no credit for it, however close the row is."""
    flat = np.array(sorted({r for f in found for r in f if r >= 0}), dtype=np.int64)
    if flat.size == 0:
        return [[] for _ in found]
    vecs = read_rows(ds, flat)
    scores = vecs @ queries[: len(found)].T  # (rows, queries)
    if keep is not None:
        scores[~keep(flat)] = -np.inf
    pos = {int(r): i for i, r in enumerate(flat)}
    return [[float(scores[pos[r], i]) for r in f] for i, f in enumerate(found)]


class Job:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.spec = SPECS[job["config"]]
        folder = Path(job["dataset_folder"])
        info = json.loads((folder / "info.json").read_text())
        self.ds = Dataset(
            job["dataset_key"], info["name"], int(info["n"]), int(info["dim"]), folder, info
        )
        self.store_dir = Path(job["store_dir"])
        self.cls = store_class(self.spec.backend)
        self.options: dict[str, Any] = dict(job["options"])
        self.deadline = float(job["deadline"])
        self.result: dict[str, Any] = {"notes": []}
        self.monitor = Monitor(
            Path(job["progress"]), self.store_dir, self.spec.backend == "pgvector"
        )

    def config(self, value: int | None) -> StoreConfig:
        opts = dict(self.options)
        if value is not None and self.spec.sweep_option:
            opts[self.spec.sweep_option] = value
        return StoreConfig(self.store_dir, url=self.job.get("url"), options=opts)

    def open(self, value: int | None, *, create: bool = False) -> Any:
        return self.cls(COLLECTION, dim=self.ds.dim, config=self.config(value), create=create)

    def left(self) -> float:
        return self.deadline - time.time()

    def phase(self, name: str, total: int = 0) -> None:
        reset_peak()
        self.monitor.set_phase(name, total)

    def hwm(self) -> float:
        return round(_status_kb("VmHWM") / 1024, 1)

    # --- phases ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        r = self.result
        job = self.job
        shutil.rmtree(self.store_dir, ignore_errors=True)
        self.store_dir.mkdir(parents=True)
        self.monitor.start()
        peaks: dict[str, float] = {}
        t_start = time.perf_counter()

        self.phase("load", self.ds.n)
        store = self.open(self.spec.default, create=True)
        load_s = 0.0
        batch = int(job["batch"])
        for start, vecs in self.ds.iter_base(batch):
            chunks = [
                Chunk(row_id(row), "", {"bucket": bucket(row)})
                for row in range(start, start + len(vecs))
            ]
            t0 = time.perf_counter()
            store.upsert(chunks, vecs)
            load_s += time.perf_counter() - t0
            self.monitor.advance(start + len(vecs))
        r["load_s"] = round(load_s, 3)
        r["load_vps"] = round(self.ds.n / load_s, 1) if load_s else None
        peaks["load"] = self.hwm()

        self.phase("build")
        build_s = None
        for method in ("build_index", "optimize"):
            if hasattr(store, method):
                t0 = time.perf_counter()
                getattr(store, method)()
                build_s = time.perf_counter() - t0
                r["build_method"] = method
                break
        for attr in ("last_build", "build_warning"):  # pgvector reports its build
            if getattr(store, attr, None):
                r[attr] = getattr(store, attr)
        t0 = time.perf_counter()
        store.close()
        r["close_s"] = round(time.perf_counter() - t0, 3)
        r["build_s"] = None if build_s is None else round(build_s, 3)
        # Time to a searchable index: everything from the first upsert to a closed store.
        r["index_total_s"] = round(load_s + (build_s or 0.0) + r["close_s"], 3)
        peaks["build"] = self.hwm()
        r["disk_mb"] = round(du_mb(self.store_dir), 1)
        if self.spec.backend == "pgvector" and (self.store_dir / "pgdata" / "base").is_dir():
            # Tables and indexes only; the whole cluster (WAL, catalogs) is disk_total_mb.
            r["disk_total_mb"] = r["disk_mb"]
            r["disk_mb"] = round(du_mb(self.store_dir / "pgdata" / "base"), 1)

        # pgvector: one store held open through the search phases keeps the embedded
        # server (and its shared buffers) up while each sweep point reopens the store.
        keeper = self.open(self.spec.default) if self.spec.backend == "pgvector" else None
        try:
            self.search_phases(peaks)
        finally:
            if keeper is not None:
                keeper.close()
        r["peak_rss_mb"] = peaks
        r["peak_rss_max_mb"] = max(peaks.values())
        r["peak_anon_mb"] = {k: round(v, 1) for k, v in self.monitor.anon_peak.items()}
        if self.monitor.server_peak:
            r["server_peak_mb"] = {k: round(v, 1) for k, v in self.monitor.server_peak.items()}
            r["server_peak_max_mb"] = round(max(self.monitor.server_peak.values()), 1)
        r["wall_s"] = round(time.perf_counter() - t_start, 2)
        if self.monitor.loads:
            # Other work on the machine: timings taken at a load over the core count are slow.
            r["load_avg_mean"] = round(float(np.mean(self.monitor.loads)), 2)
        return r

    def search_phases(self, peaks: dict[str, float]) -> None:
        r = self.result
        job = self.job
        queries = self.ds.queries()
        nq = min(int(job["queries"]), len(queries))
        truth_ids, truth_scores = self.ds.truth("all")
        values = self.spec.sweep_values(bool(job["quick"]))
        search_cap = float(job["search_seconds"])
        tp_cap = float(job["throughput_seconds"])
        clients = [int(c) for c in job["clients"]]
        # What the remaining phases need at most, so the job ends inside its budget.
        reserve = 10.0 + len(clients) * tp_cap + 2 * search_cap
        self.phase("search", len(values) * nq)
        sweep = []
        done = 0
        first_open = True
        for value in values:
            cap = min(search_cap, (self.left() - reserve) / max(1, len(values) - len(sweep)))
            if cap < 1.0:
                r["notes"].append(f"sweep stopped at {self.spec.sweep_option}={value}: budget")
                break
            t0 = time.perf_counter()
            store = self.open(value)
            if first_open:
                r["open_s"] = round(time.perf_counter() - t0, 3)
                first_open = False
            try:
                for q in queries[
                    -WARMUP:
                ]:  # from the end: outside the measured ones unless all are
                    store.search(q, k=K)
                lat, found = self._serial(store, queries[:nq], cap, done)
            finally:
                store.close()
            done += nq
            scores = score_found(self.ds, queries, found)
            row = {
                "param": self.spec.sweep_option,
                "value": value,
                "queries": len(found),
                "recall": round(
                    mean_recall(
                        found, truth_ids, K, found_scores=scores, truth_scores=truth_scores
                    ),
                    5,
                ),
                **{f"{k}_ms": round(v * 1e3, 4) for k, v in percentiles(lat).items()},
                "mean_ms": round(float(np.mean(lat)) * 1e3, 4) if lat else None,
                "qps_serial": round(len(lat) / sum(lat), 1) if lat else None,
            }
            sweep.append(row)
        r["sweep"] = sweep
        default = next(
            (s for s in sweep if s["value"] == self.spec.default), sweep[-1] if sweep else None
        )
        if default:
            r["default"] = default["value"]
            for key in ("recall", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "qps_serial"):
                r[key] = default[key]
        peaks["search"] = self.hwm()

        store = self.open(self.spec.default)
        try:
            self.phase("filtered", 2 * int(job["filtered_queries"]))
            r["filtered"] = {}
            nqf = min(int(job["filtered_queries"]), len(queries))
            after = 10.0 + len(clients) * tp_cap  # what throughput needs afterwards
            for i, (name, (spec, keep)) in enumerate(FILTERS.items()):
                cap = min(search_cap, (self.left() - after) / (len(FILTERS) - i))
                if cap < 1.0:
                    r["notes"].append(f"filtered {name} skipped: budget")
                    continue
                lat, found = self._serial(store, queries[:nqf], cap, 0, where=parse(spec))
                f_ids, f_scores = self.ds.truth(name)
                scores = score_found(self.ds, queries, found, keep)
                r["filtered"][name] = {
                    "queries": len(found),
                    "recall": round(
                        mean_recall(found, f_ids, K, found_scores=scores, truth_scores=f_scores), 5
                    ),
                    **{f"{k}_ms": round(v * 1e3, 4) for k, v in percentiles(lat).items()},
                }
            peaks["filtered"] = self.hwm()
            self.phase("throughput", len(clients))
            r["throughput"] = {}
            for c in clients:
                cap = min(tp_cap, self.left() - 10.0)
                if cap < 1.0:
                    r["notes"].append(f"throughput with {c} clients skipped: budget")
                    continue
                r["throughput"][str(c)] = self._throughput(store, queries[:nq], c, cap)
            peaks["throughput"] = self.hwm()
        finally:
            store.close()

    def _serial(
        self, store: Any, queries: np.ndarray, cap: float, done: int, where: Any = None
    ) -> tuple[list[float], list[list[int]]]:
        lat: list[float] = []
        found: list[list[int]] = []
        stop = time.perf_counter() + cap
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            hits = store.search(q, k=K, where=where)
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            found.append([id_row(h.id) for h in hits])
            if i % 50 == 0:
                self.monitor.advance(done + i)
            if t1 > stop:
                break
        return lat, found

    def _throughput(
        self, store: Any, queries: np.ndarray, clients: int, cap: float
    ) -> dict[str, Any]:
        own = self.spec.backend == "pgvector"  # separate connections: one store per client
        stores = (
            [self.open(self.spec.default) for _ in range(clients)] if own else [store] * clients
        )
        counts = [0] * clients
        errors: list[str] = []
        start = threading.Barrier(clients + 1)
        deadline = [0.0]

        def client(i: int) -> None:
            s = stores[i]
            start.wait()
            j = i
            try:
                while time.perf_counter() < deadline[0]:
                    s.search(queries[j % len(queries)], k=K)
                    counts[i] += 1
                    j += clients
            except Exception as e:  # reported, not raised: the other clients go on
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        deadline[0] = time.perf_counter() + cap
        t0 = time.perf_counter()
        start.wait()
        for t in threads:
            t.join(timeout=cap + 120)
        elapsed = time.perf_counter() - t0
        if own:
            for s in stores:
                s.close()
        out: dict[str, Any] = {"qps": round(sum(counts) / elapsed, 1), "queries": sum(counts)}
        if errors:
            out["errors"] = errors[:3]
        self.monitor.advance(clients)
        return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in (
        "faiss-cpu",
        "chromadb",
        "qdrant-edge-py",
        "qdrant-client",
        "psycopg",
        "pgvector",
        "numpy",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    out = Path(job["result"])
    try:
        worker = Job(job)
        try:
            result = worker.run()
        finally:
            worker.monitor.stop()
        result["status"] = "ok"
    except BaseException as e:  # the parent records it; a KeyboardInterrupt too
        result = {
            "status": "error",
            "reason": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc()[-4000:],
        }
    result["versions"] = versions()
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
