"""The vector-store benchmark: ``python -m eval.bench`` (``rag bench`` calls :func:`main`).

What it does, per dataset, size N and store configuration (``eval/bench_stores.py``):
prepares the dataset once (``eval/bench_data.py``: vectors, queries and exact ground truth
computed with FAISS, cached as ``.npy``), then runs the job in a worker process of its own
(``eval/bench_worker.py``) that loads the vectors through the production adapter, builds,
and measures recall@10, serial latency over a sweep of the search parameter, filtered search
and throughput. Results go to ``OUT/results.jsonl``, one line per job, appended and
flushed as each job ends; ``OUT/report.md`` and the PNG plots are rewritten at the end
(``eval/bench_report.py``). ``--json`` prints one JSON object summarising the run on stdout.

Where things go
    Nothing is written inside the package. ``OUT`` is ``--out``, by default
    ``<data dir>/bench/runs/latest``; the dataset cache is ``--cache-dir``, by default
    ``<data dir>/bench/cache``; the data directory is ``--data-dir``, else ``RAG_DATA_DIR``,
    else ``.rag`` (as for every ``rag`` command). Workers run in their job's folder under
    ``OUT/work``.

Budgets, resume and skips
    Each job has a wall-clock budget: ``--budget-minutes`` at the largest N of the run,
    scaled by ``sqrt(N / N_max)`` for smaller N, never under 5 minutes
    (``--budget-seconds`` sets one fixed budget instead). The parent kills a job's
    process group when it runs over, or when the worker's RSS plus its PostgreSQL server's
    PSS passes ``--mem-limit-gb``, and records ``{"status": "skipped", "reason": "over
    budget (N s)", ...}`` with how far the job had got. A configuration that was skipped at
    one N is skipped at every larger N, and one whose previous N predicts more than 1.5
    times the budget or memory (load and build time scaled by ``(N2/N1) ** 1.15``, the
    time-capped search phases carried over, memory linearly) is
    skipped without being run, with the prediction as the reason. A rerun with the same
    ``--out`` skips every job already in the JSONL (``--retry-errors`` reruns failed
    ones), so a killed run resumes where it stopped.

Advice
    ``--advise --n N --dim D --recall R`` reads measurements (``--results FILE``, else
    ``OUT/results.jsonl``) and recommends a configuration (``eval/bench_advise.py``); nothing
    is run. The sweep of ``docs/bench/report.md`` ships as ``eval/results/bench-sweep.jsonl``.
    No measurements, or a target past them, exit 1 with where it looked; usage mistakes 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval import bench_data
from eval.bench_advise import DEFAULT_MAX_FACTOR
from eval.bench_metrics import fmt_n
from eval.bench_stores import SPECS, StoreSpec, select
from rag.errors import ConfigError, MissingDependencyError, PluginConflictError, RagError

ROOT = Path(__file__).resolve().parent.parent
#: Under the data directory (``--data-dir``, ``RAG_DATA_DIR``, ``.rag``).
BENCH_DIR = Path("bench")
DEFAULT_OUT = BENCH_DIR / "runs" / "latest"
DEFAULT_CACHE = BENCH_DIR / "cache"
DEFAULT_SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
RESULTS = "results.jsonl"
#: The sweep of docs/bench/report.md, summarised (``eval/bench_summary.py``).
SHIPPED_SWEEP = Path(__file__).resolve().parent / "results" / "bench-sweep.jsonl"
EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2
MIN_BUDGET_S = 300.0  # the search phases alone can take minutes
PREDICT_TIME_EXPONENT = 1.15
PREDICT_MARGIN = 1.5

QUICK = {
    "sizes": "10k,20k",
    "queries": 200,
    "filtered_queries": 20,
    "clients": "1,2",
    "search_seconds": 3.0,
    "throughput_seconds": 1.0,
    "budget_seconds": 60.0,
    "batch": 5000,
}


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        mult, t = 1000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    try:
        value = float(t) * mult
    except ValueError as e:
        raise ConfigError(f"bad size {text!r}: use e.g. 10000, 10k, 1.5m") from e
    if value < 1 or value != int(value):
        raise ConfigError(f"bad size {text!r}")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    return sorted({parse_size(p) for p in text.split(",") if p.strip()})


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def data_dir(args: argparse.Namespace) -> Path:
    """``--data-dir``, else ``RAG_DATA_DIR``, else ``.rag``, checked as ``Settings`` checks it."""
    from rag.config import Settings

    given = args.data_dir if args.data_dir is not None else os.environ.get("RAG_DATA_DIR", ".rag")
    return Settings(data_dir=given).data_dir


def resolve_paths(args: argparse.Namespace) -> None:
    """Fill in ``--out`` and ``--cache-dir`` under the data directory when not given."""
    base = data_dir(args)
    if args.out is None:
        args.out = str(base / DEFAULT_OUT)
    if args.cache_dir is None:
        args.cache_dir = str(base / DEFAULT_CACHE)


def job_budget(n: int, n_max: int, minutes: float) -> float:
    return max(MIN_BUDGET_S, minutes * 60.0 * math.sqrt(n / n_max))


# --- the results file --------------------------------------------------------------------------


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a results JSONL; a torn last line (a killed write) is ignored."""
    out = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a+b") as f:
        # A run killed mid-write leaves a torn line: start on a fresh one.
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(data.encode())
        f.flush()
        os.fsync(f.fileno())


def job_key(dataset_key: str, spec: StoreSpec, options: dict[str, Any], quick: bool) -> str:
    opts = json.dumps(options, sort_keys=True, separators=(",", ":"))
    return f"{dataset_key}|{spec.name}|{opts}|{'quick' if quick else 'full'}"


# --- running one job ---------------------------------------------------------------------------


def _stop_servers(store_dir: Path) -> None:
    """Stop an embedded PostgreSQL left running by a killed worker (found by its data
    directory under ``store_dir``): SIGINT (fast shutdown), then SIGQUIT after 30 s."""
    import psutil

    from eval.bench_worker import server_processes

    procs = server_processes(store_dir)
    if not procs:
        return
    postmaster = procs[0]
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(postmaster.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if not postmaster.is_running() or postmaster.status() == "zombie":
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)


def _last_progress(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    return {}


def _phase_start(path: Path, phase: str) -> float | None:
    """When the worker entered ``phase`` (its first progress line there)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if row.get("phase") == phase:
                return float(row["t"])
    return None


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


class Runner:
    """Runs the jobs of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()  # workers run in their job folder
        args.cache_dir = str(Path(args.cache_dir).resolve())
        self.results = self.out / RESULTS
        self.work = self.out / "work"
        self.progress_enabled = not args.no_progress

    def log(self, msg: str) -> None:
        if self.progress_enabled:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def run_job(self, job: dict[str, Any], budget: float, bar: Any) -> dict[str, Any]:
        jobdir = self.work / job["id"]
        shutil.rmtree(jobdir, ignore_errors=True)
        jobdir.mkdir(parents=True)
        store_dir = jobdir / "store"
        job.update(
            store_dir=str(store_dir),
            progress=str(jobdir / "progress.jsonl"),
            result=str(jobdir / "result.json"),
            deadline=time.time() + budget,
        )
        (jobdir / "job.json").write_text(json.dumps(job))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # OpenMP's spinning barriers collapse on a shared machine (FAISS: 70 ms instead of
        # 1.7 ms for a 10k flat query at load average 10 on 2 cores): threads sleep instead.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if self.args.threads:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.args.threads)
        started = time.monotonic()
        log = open(jobdir / "worker.log", "wb")  # noqa: SIM115 (closed in finally)
        proc = subprocess.Popen(
            [sys.executable, "-m", "eval.bench_worker", str(jobdir / "job.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(jobdir),  # whatever an engine writes to its working folder stays here
            start_new_session=True,
        )
        reason = None
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                elapsed = time.monotonic() - started
                prog = _last_progress(Path(job["progress"]))
                if bar is not None and prog:
                    total = prog.get("total") or 0
                    bar.set_postfix_str(
                        f"{prog.get('phase')} {prog.get('done', 0):,}/{total:,} "
                        f"rss {prog.get('rss_mb', 0):,.0f} MB {elapsed:,.0f}s",
                        refresh=True,
                    )
                if elapsed > budget:
                    reason = f"over budget ({budget:.0f} s)"
                else:
                    mem = _tree_rss_mb(proc.pid) + float(prog.get("server_mb") or 0.0)
                    if mem > self.args.mem_limit_gb * 1024:
                        reason = f"over memory limit ({mem / 1024:.1f} GB > {self.args.mem_limit_gb:g} GB)"
                if reason:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    break
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            _stop_servers(store_dir)
            raise
        finally:
            log.close()
        wall = time.monotonic() - started
        _stop_servers(store_dir)
        if reason:
            prog = _last_progress(Path(job["progress"]))
            where = prog.get("phase", "start")
            detail = f"{where}"
            if prog.get("total"):
                detail += f" {prog.get('done', 0):,}/{prog['total']:,}"
            since = _phase_start(Path(job["progress"]), where)
            if since is not None and prog.get("t"):
                detail += f", {prog['t'] - since:,.0f} s into it"
            record = {"status": "skipped", "reason": f"{reason}, during {detail}", "progress": prog}
        else:
            try:
                record = json.loads(Path(job["result"]).read_text())
            except (OSError, ValueError):
                tail = (jobdir / "worker.log").read_bytes()[-2000:].decode(errors="replace")
                record = {
                    "status": "error",
                    "reason": f"worker exited {proc.returncode}",
                    "log_tail": tail,
                }
            else:
                if record.get("status") == "ok" and not record.get("sweep"):
                    # The budget ran out before one search was measured: nothing to report.
                    notes = "; ".join(record.get("notes", []))
                    record = {
                        "status": "skipped",
                        "reason": f"over budget ({budget:.0f} s), before search ({notes})",
                        "progress": _last_progress(Path(job["progress"])),
                    }
        record["job_wall_s"] = round(wall, 2)
        record["budget_s"] = round(budget, 1)
        if not self.args.keep_stores:
            shutil.rmtree(store_dir, ignore_errors=True)
        return record

    # --- the plan ---------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        specs = select(args.stores, quick=args.quick, urls={"qdrant": args.qdrant_url})
        specs = [s for s in specs if self._installed(s)]
        if not specs:
            raise ConfigError("no store configuration to run (none installed?)")
        sizes = parse_sizes(args.sizes)
        datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
        records = load_records(self.results)
        done = {r["key"]: r for r in records if "key" in r}
        plan: list[tuple[str, int]] = []
        for name in datasets:
            limit = bench_data.available_rows(
                name,
                scifact_dir=Path(args.scifact_dir),
                cache_dir=Path(args.cache_dir),
                backend=args.embed_backend,
            )
            for n in sizes:
                if limit is not None and n > limit:
                    self.log(f"{name}: {fmt_n(n)} skipped, the dataset has {limit:,} vectors")
                    continue
                plan.append((name, n))
        n_max = max(n for _, n in plan) if plan else 1
        total_jobs = len(plan) * len(specs)
        bar_jobs = bar_job = None
        if self.progress_enabled:
            from tqdm import tqdm

            bar_jobs = tqdm(total=total_jobs, desc="jobs", position=0, file=sys.stderr)
            bar_job = tqdm(total=0, position=1, bar_format="{desc} {postfix}", file=sys.stderr)
        try:
            for name, n in sorted(plan, key=lambda p: (p[1], datasets.index(p[0]))):
                ds = None
                dim = bench_data.dataset_dim(name, args.dim)
                for spec in specs:
                    options = spec.options(n, dim)
                    key_ds = bench_data.dataset_key(
                        name, n, dim, args.seed, args.queries, backend=args.embed_backend
                    )
                    key = job_key(key_ds, spec, options, args.quick)
                    if bar_jobs is not None:
                        bar_jobs.set_description(f"{name} {fmt_n(n)} {spec.name}")
                    prior = done.get(key)
                    if prior and (prior["status"] != "error" or not args.retry_errors):
                        if bar_jobs is not None:
                            bar_jobs.update(1)
                        continue
                    budget = (
                        float(args.budget_seconds)
                        if args.budget_seconds
                        else job_budget(n, n_max, args.budget_minutes)
                    )
                    base = {
                        "key": key,
                        "dataset": name,
                        "dataset_key": key_ds,
                        "n": n,
                        "dim": dim,
                        "config": spec.name,
                        "backend": spec.backend,
                        "family": spec.family,
                        "description": spec.description,
                        "options": options,
                        "quick": bool(args.quick),
                        "started": datetime.now(UTC).isoformat(timespec="seconds"),
                        "host": host_info(),
                        "threads": args.threads or os.cpu_count(),
                        "command": args.command_line,
                    }
                    skip = self._predict_skip(records, name, spec, n, budget)
                    if skip:
                        record = {**base, "status": "skipped", "reason": skip, "budget_s": budget}
                    else:
                        if ds is None:
                            ds = bench_data.prepare(
                                name,
                                n,
                                dim=args.dim,
                                cache_dir=Path(args.cache_dir),
                                seed=args.seed,
                                queries=args.queries,
                                scifact_dir=Path(args.scifact_dir),
                                embed_backend=args.embed_backend,
                                log=self.log,
                            )
                        base["dataset_stats"] = {
                            k: ds.info[k] for k in ("lid20", "contrast", "clusters") if k in ds.info
                        }
                        job = {
                            "id": f"{ds.key}-{spec.name}",
                            "config": spec.name,
                            "dataset_key": ds.key,
                            "dataset_folder": str(ds.folder),
                            "options": options,
                            "url": args.qdrant_url if spec.needs_url == "qdrant" else None,
                            "queries": args.queries,
                            "filtered_queries": args.filtered_queries,
                            "clients": [int(c) for c in args.clients.split(",")],
                            "search_seconds": args.search_seconds,
                            "throughput_seconds": args.throughput_seconds,
                            "batch": args.batch,
                            "quick": bool(args.quick),
                        }
                        record = {**base, **self.run_job(job, budget, bar_job)}
                    append_record(self.results, record)
                    records.append(record)
                    done[key] = record
                    self.log(summary_line(record))
                    if bar_jobs is not None:
                        bar_jobs.update(1)
        finally:
            for bar in (bar_job, bar_jobs):
                if bar is not None:
                    bar.close()
        return records

    @staticmethod
    def _installed(spec: StoreSpec) -> bool:
        import importlib.util

        from rag import plugins

        try:
            plugin = plugins.get("stores", spec.backend)
        except RagError:
            return False
        if not plugin.installed:
            return False
        return importlib.util.find_spec(plugin.module) is not None

    def _predict_skip(
        self, records: list[dict[str, Any]], dataset: str, spec: StoreSpec, n: int, budget: float
    ) -> str | None:
        prev = [
            r
            for r in records
            if r.get("dataset") == dataset
            and r.get("config") == spec.name
            and r.get("n", 0) < n
            and r.get("quick") == bool(self.args.quick)
        ]
        if not prev:
            return None
        over = [r for r in prev if r["status"] == "skipped"]
        if over:
            r = max(over, key=lambda r: r["n"])
            return f"skipped at {fmt_n(r['n'])} already ({r.get('reason', '')})"
        ok = [r for r in prev if r["status"] == "ok" and r.get("job_wall_s")]
        if not ok:
            return None
        last = max(ok, key=lambda r: r["n"])
        scale = n / last["n"]
        # Loading and building grow with N; the search phases are capped by time and query
        # count, so they are carried over as they were.
        index_s = float(last.get("index_total_s") or 0.0)
        t = max(0.0, last["job_wall_s"] - index_s) + index_s * scale**PREDICT_TIME_EXPONENT
        if t > PREDICT_MARGIN * budget:
            return (
                f"predicted over budget: {t:,.0f} s against {budget:,.0f} s "
                f"(from {last['job_wall_s']:,.0f} s at {fmt_n(last['n'])})"
            )
        mem_mb = (last.get("peak_rss_max_mb") or 0) + (last.get("server_peak_max_mb") or 0)
        if mem_mb * scale > PREDICT_MARGIN * self.args.mem_limit_gb * 1024:
            return (
                f"predicted over memory: {mem_mb * scale / 1024:,.1f} GB against "
                f"{self.args.mem_limit_gb:g} GB (from {mem_mb / 1024:,.2f} GB at {fmt_n(last['n'])})"
            )
        return None


def summary_line(r: dict[str, Any]) -> str:
    head = f"{r.get('dataset')} {fmt_n(r.get('n', 0))} {r.get('config')}:"
    if r.get("status") != "ok":
        return f"{head} {r.get('status')}: {r.get('reason')}"
    return (
        f"{head} load {r.get('load_s', 0):.1f}s "
        f"build {'in load' if r.get('build_s') is None else format(r['build_s'], '.1f') + 's'} "
        f"recall {r.get('recall', float('nan')):.3f} p50 {r.get('p50_ms', float('nan')):.2f}ms "
        f"p99 {r.get('p99_ms', float('nan')):.2f}ms peak {r.get('peak_rss_max_mb', 0):,.0f}MB"
    )


def host_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load1": round(os.getloadavg()[0], 2),
    }


# --- the command line --------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    import psutil

    mem_gb = psutil.virtual_memory().total / 2**30
    p = argparse.ArgumentParser(
        prog="rag bench",
        description="Benchmark the vector stores: load, build, recall, latency, throughput, "
        "filtered search and memory, over sizes and search parameters. Results and caches go "
        "under the data directory (or --out and --cache-dir), never into the package.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="the data directory (default RAG_DATA_DIR, else .rag)",
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"results folder (JSONL, plots, report.md); a rerun resumes "
        f"(default <data dir>/{DEFAULT_OUT.as_posix()})",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="dataset cache: vectors, queries, ground truth "
        f"(default <data dir>/{DEFAULT_CACHE.as_posix()})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout: where the results went and, per dataset, size "
        "and configuration, the headline figures (with --advise: the advice)",
    )
    p.add_argument("--sizes", default="10k,100k", help="comma-separated N (10k, 1.5m, 250000)")
    p.add_argument("--dim", type=int, default=384, help="synthetic vector dimension")
    p.add_argument(
        "--stores",
        default="all",
        help="configurations: all, backend names (faiss, chroma, qdrant, pgvector) or "
        f"configuration names ({', '.join(SPECS)})",
    )
    p.add_argument(
        "--datasets", default="synthetic", help="synthetic, scifact, hdf5:PATH (comma-separated)"
    )
    p.add_argument("--queries", type=int, default=1000, help="queries per sweep point")
    p.add_argument("--filtered-queries", type=int, default=200, help="queries per filter")
    p.add_argument("--clients", default="1,2,4", help="concurrent clients for throughput")
    p.add_argument(
        "--search-seconds", type=float, default=60.0, help="time cap per sweep point and filter"
    )
    p.add_argument("--throughput-seconds", type=float, default=10.0, help="time per client count")
    p.add_argument("--batch", type=int, default=10_000, help="rows per upsert")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=45.0,
        help="budget of a job at the largest N (scaled by sqrt(N/Nmax), at least 5 min)",
    )
    p.add_argument(
        "--budget-seconds", type=float, default=None, help="one fixed budget per job instead"
    )
    p.add_argument(
        "--mem-limit-gb",
        type=float,
        default=round(0.7 * mem_gb, 1),
        help=f"kill a job whose memory passes this (default 70%% of RAM: {0.7 * mem_gb:.1f})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=bench_data.DEFAULT_SEED,
        help="seed of the synthetic data and of the query sample",
    )
    p.add_argument(
        "--scifact-dir",
        default=str(DEFAULT_SCIFACT),
        help="BEIR SciFact folder for --datasets scifact",
    )
    p.add_argument(
        "--embed-backend",
        default="torch",
        help="embedding backend for scifact (torch, onnx, onnx-int8)",
    )
    p.add_argument(
        "--qdrant-url", default=None, help="a Qdrant server: adds the qdrant-server configuration"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OpenMP/BLAS threads per job (default: every core)",
    )
    p.add_argument(
        "--keep-stores", action="store_true", help="keep each job's store folder under OUT/work"
    )
    p.add_argument("--retry-errors", action="store_true", help="rerun jobs that ended in an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per job)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small run: 10k and 20k, five configurations, 200 queries, 60 s budgets (under "
        "2 minutes on an idle 2-core machine); options given as well take precedence",
    )
    p.add_argument(
        "--report-only", action="store_true", help="rewrite the report and plots from OUT's JSONL"
    )
    a = p.add_argument_group("advice (--advise: nothing is run)")
    a.add_argument(
        "--advise",
        action="store_true",
        help="recommend a configuration for --n/--dim/--recall from measured results",
    )
    a.add_argument("--n", type=_size_arg, default=None, help="the collection size (required)")
    a.add_argument("--recall", type=float, default=0.95, help="the recall@10 target")
    a.add_argument(
        "--results",
        default=None,
        help="the measurements: a results.jsonl or a folder holding one (default OUT's; "
        f"the committed sweep is {SHIPPED_SWEEP})",
    )
    a.add_argument(
        "--max-extrapolation",
        type=float,
        default=DEFAULT_MAX_FACTOR,
        help="predict up to this many times the largest N measured; 1 means no further",
    )
    return p


def apply_quick(args: argparse.Namespace, argv: Sequence[str]) -> None:
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    for name, value in QUICK.items():
        if f"--{name.replace('_', '-')}" not in given:
            setattr(args, name, value)


@contextlib.contextmanager
def _interruptible() -> Any:
    """SIGTERM, and SIGINT even in a background job (which inherits it ignored), stop the
    run cleanly: the running job is killed and its server stopped; rerun to resume."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def advice_source(args: argparse.Namespace) -> Path:
    """The results file ``--advise`` reads: ``--results`` (a file, or a folder holding
    ``results.jsonl``), else ``OUT/results.jsonl``."""
    path = Path(args.results) if args.results is not None else Path(args.out)
    return path / RESULTS if path.is_dir() or args.results is None else path


def run_advice(args: argparse.Namespace) -> int:
    from eval.bench_advise import NoAdvice, advise_data, render

    if args.n is None:
        raise ConfigError("--advise needs --n (and --dim, --recall)")
    source = advice_source(args)
    records = load_records(source)
    try:
        if not records:
            where = "does not exist" if not source.exists() else "holds no measurement"
            raise NoAdvice(f"nothing to advise from: {source.absolute()} {where}")
        data = advise_data(
            records,
            n=args.n,
            dim=args.dim,
            recall=args.recall,
            max_factor=args.max_extrapolation,
            source=str(source),
        )
    except NoAdvice as e:
        hint = (
            "run the benchmark first (rag bench writes there; after rag bench --out DIR, "
            f"advise with --results DIR), or advise from the measured sweep that ships with "
            f"ragkit: --results {SHIPPED_SWEEP}"
        )
        text = f"{e}; {hint}" if "nothing to advise" in str(e) else str(e)
        print(f"error: {text}", file=sys.stderr)
        return EXIT_NOTHING
    print(json.dumps(data, indent=2) if args.json else render(data))
    return EXIT_OK


def run_summary(
    out: Path, records: list[dict[str, Any]], *, report: Path, cache: str | None, ran: int
) -> dict[str, Any]:
    """What ``--json`` prints: where everything went, and per dataset, size and configuration
    the headline figures at the default search parameter."""
    jobs = []
    for r in sorted(
        records, key=lambda r: (r.get("dataset", ""), r.get("n", 0), r.get("config", ""))
    ):
        row: dict[str, Any] = {
            "dataset": r.get("dataset"),
            "n": r.get("n"),
            "config": r.get("config"),
            "status": r.get("status"),
        }
        if r.get("status") == "ok":
            tp = r.get("throughput") or {}
            best = max(tp.values(), key=lambda t: t.get("qps") or 0, default={})
            row.update(
                param=(r.get("sweep") or [{}])[0].get("param"),
                value=r.get("default"),
                recall=r.get("recall"),
                p50_ms=r.get("p50_ms"),
                p99_ms=r.get("p99_ms"),
                qps_serial=r.get("qps_serial"),
                qps_max=best.get("qps"),
                index_s=r.get("index_total_s"),
                peak_mb=round(
                    float(r.get("peak_rss_max_mb") or 0) + float(r.get("server_peak_max_mb") or 0),
                    1,
                ),
                disk_mb=r.get("disk_mb"),
                filtered_recall={k: v.get("recall") for k, v in (r.get("filtered") or {}).items()},
            )
        else:
            row["reason"] = r.get("reason")
        jobs.append(row)
    return {
        "out": str(out),
        "results": str(out / RESULTS),
        "report": str(report),
        "plots": sorted(str(p) for p in out.glob("*.png")),
        "cache": cache,
        "jobs_run": ran,
        "jobs": jobs,
    }


def exit_status(error: RagError) -> int:
    """As ``rag`` decides it: 2 for a mistake in what was asked, 1 for the installation, a
    store or the files."""
    if isinstance(error, MissingDependencyError | PluginConflictError):
        return EXIT_NOTHING
    return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_NOTHING


def main(argv: Sequence[str] | None = None) -> int:
    """``rag bench``: 0 when done, 1 when there is nothing to advise from or report on, 2 for
    a usage mistake, 130 when interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "python -m eval.bench " + shlex.join(argv)
    try:
        resolve_paths(args)
        if args.advise:
            return run_advice(args)
        from eval.bench_report import write_report

        out = Path(args.out)
        before = len(load_records(out / RESULTS))
        if args.report_only:
            if not (out / RESULTS).exists():
                print(
                    f"error: nothing to report on: {out / RESULTS} does not exist", file=sys.stderr
                )
                return EXIT_NOTHING
        else:
            if args.quick:
                apply_quick(args, argv)
            with _interruptible():
                Runner(args).run()
        records = load_records(out / RESULTS)
        path = write_report(out, records, command=args.command_line)
        if args.json:
            summary = run_summary(
                out.resolve(),
                records,
                report=path.resolve(),
                cache=None if args.report_only else str(Path(args.cache_dir).resolve()),
                ran=len(records) - before,
            )
            print(json.dumps(summary, indent=2))
        else:
            print(f"report: {path}")
        return EXIT_OK
    except RagError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_status(e)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
