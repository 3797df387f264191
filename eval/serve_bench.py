"""Load on ``rag serve``: latency and throughput of ``/v1/search`` and
``/v1/chat/completions`` (extractive generator) with dynamic batching on and off.

    python -m eval.serve_bench --chunks 20000     # a 20,000-chunk collection: figures sooner
    python -m eval.serve_bench                    # 100,000 chunks (the build takes long, once)
    python -m eval.serve_bench --quick --corpus tiny/corpus.jsonl --embed-backend hashing

**The collection.** SciFact's abstracts (``--corpus``, a BEIR ``corpus.jsonl``, read where it
lies) cut into passages: titles, sentences, and two- and three-sentence windows, at most
600 characters, in a fixed shuffled order (``--seed``); the first ``--chunks`` of them are
written under ``--data-dir`` as Markdown files of 1,000 sections, one passage a section (a
section is one chunk), and ingested into FAISS HNSW (M 32, efConstruction 200, efSearch 64)
with the default embedder (``--embed-backend``/``--embed-model`` to change it). Ingest is
incremental, so an interrupted build resumes where it stopped, and a larger collection in
the same data directory takes the vectors a smaller one already embedded from the
embedding cache. Progress is printed as it goes.

**The servers.** Two server processes on free loopback ports, one with batching on and one
with it off, both up for the whole run. eval never imports apps (the layers contract), so
each runs from a launcher script in its own interpreter: the app of ``rag serve``
(``create_app``) with the batching setting under test, under uvicorn without an access log.
Their gateway has NO rate limit (the default 120 requests a minute per client would
throttle a load test) and admits ``--max-in-flight`` requests at once with ``--max-queued``
more waiting; beyond that it answers 503, which the bench counts.

**The load.** For each level of concurrent clients (``--levels``), closed-loop clients
(:mod:`eval.serve_load`) send ``--requests`` searches (``--chat-requests`` chat requests),
the SciFact claims in a fixed order, or stop at ``--time-cap`` seconds; the same requests in
both settings. Each level runs on one server and straight after on the other (the order
alternating from level to level), ``--rounds`` times, so that the machine's background load
falls on both alike. Reported per level: p50/p95/p99 latency of the successful requests
and requests/s (medians over the rounds), 503s and other errors; with the servers' batch
sizes, whether the batched searches returned the unbatched hits, and the CPU flags. JSON
goes to ``--out``, and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from eval.record import write_result
from eval.serve_corpus import HNSW, build
from eval.serve_load import drive, get

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
DEFAULT_DATA_DIR = Path("/tmp/ragkit-serve-bench")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni")


# --- the server ----------------------------------------------------------------------------------

_SERVER = r"""
import inspect, json, sys
from pathlib import Path
import uvicorn
from apps.serve.app import create_app
from apps.serve.batching import BatchConfig
from apps.serve.gateway import GatewayConfig
from apps.serve.service import Service
from rag.config import Settings

a = json.loads(sys.argv[1])
settings = Settings(
    data_dir=Path(a["data_dir"]), generator="extractive", store_options=a["store_options"]
)
batching = BatchConfig(**a["batching"])
gateway = GatewayConfig(**a["gateway"])
if "batching" in inspect.signature(create_app).parameters:
    app = create_app(settings, gateway_config=gateway, batching=batching)
else:  # a create_app without batching=: its service swapped for one with it
    app = create_app(settings, gateway_config=gateway)
    app.state.service = Service(settings, batching=batching)
service = app.state.service
config = uvicorn.Config(
    app, host="127.0.0.1", port=a["port"], log_level="warning", access_log=False, lifespan="on"
)
try:
    uvicorn.Server(config).run()
except KeyboardInterrupt:  # uvicorn stops gracefully on SIGINT, then raises it again
    pass
stats = service.batch_stats()
service.close()
print("SERVE_BENCH_STATS " + json.dumps(stats), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The launcher script in a process of its own, on a free loopback port."""

    def __init__(self, args: argparse.Namespace, batching: bool) -> None:
        self.port = free_port()
        self.log = args.data_dir / "logs" / f"server-batching-{'on' if batching else 'off'}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.gateway = {
            "rate_per_minute": None,
            "max_in_flight": args.max_in_flight,
            "max_queued": args.max_queued,
        }
        self.batching = {
            "enabled": batching,
            "max_batch": args.batch_max,
            "max_wait_ms": args.batch_wait_ms,
        }
        spec = {
            "data_dir": str(args.data_dir),
            "port": self.port,
            "store_options": HNSW,
            "batching": self.batching,
            "gateway": self.gateway,
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER, json.dumps(spec)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if await get("127.0.0.1", self.port, "/readyz") == 200:
                    return
            except (OSError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.2)
        self.stop()
        raise SystemExit(f"the server did not become ready in {timeout:g} s:\n{self.tail()}")

    def stop(self) -> dict[str, Any]:
        """Stops the server (SIGINT: a graceful shutdown); its batch statistics."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("SERVE_BENCH_STATS "):
                return json.loads(line.split(" ", 1)[1])
        return {}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


# --- the runs ------------------------------------------------------------------------------------


def queries(path: Path, seed: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))]


def bodies(args: argparse.Namespace, texts: list[str]) -> dict[str, list[bytes]]:
    model = f"ragkit/{args.collection}"
    return {
        "search": [json.dumps({"model": model, "query": q, "k": args.k}).encode() for q in texts],
        "chat": [
            json.dumps(
                {"model": model, "messages": [{"role": "user", "content": q}], "k": 5}
            ).encode()
            for q in texts
        ],
    }


PATHS = {"search": "/v1/search", "chat": "/v1/chat/completions"}


Hits = dict[int, dict[int, list[tuple[str, float]]]]  # clients -> request number -> hits


async def run_all(
    args: argparse.Namespace,
    load: dict[str, list[bytes]],
    log: Callable[[str], None],
    stop: threading.Event | None = None,
) -> tuple[list[dict[str, Any]], dict[bool, Hits], dict[str, Any]]:
    """Both servers (batching on and off) through every level of both endpoints, each level
    run on one server and at once on the other (the order alternating), ``--rounds`` times:
    the machine's background load then falls on both alike. Returns the rows (one per
    level, setting and round), the first round's search hits, the batch statistics."""
    servers = {True: Server(args, True), False: Server(args, False)}
    rows: list[dict[str, Any]] = []
    hits: dict[bool, Hits] = {True: {}, False: {}}
    stats: dict[str, Any] = {}
    try:
        for server in servers.values():
            await server.ready()
            for endpoint in ("search", "chat"):  # warm: the collection, model and generator
                await drive(
                    "127.0.0.1", server.port, PATHS[endpoint], load[endpoint][-8:],
                    clients=2, requests=4, time_cap=120,
                )  # fmt: skip
        turn = 0
        for round_ in range(1, args.rounds + 1):
            for endpoint in ("search", "chat"):
                requests = args.requests if endpoint == "search" else args.chat_requests
                for clients in args.levels:
                    turn += 1
                    for batching in (True, False) if turn % 2 else (False, True):
                        level = await drive(
                            "127.0.0.1",
                            servers[batching].port,
                            PATHS[endpoint],
                            load[endpoint],
                            clients=clients,
                            requests=requests,
                            time_cap=args.time_cap,
                            keep=endpoint == "search" and round_ == 1,
                            stop=stop,
                        )
                        if stop is not None and stop.is_set():
                            raise KeyboardInterrupt
                        row = {"endpoint": endpoint, "batching": batching, **level.summary()}
                        rows.append({**row, "round": round_})
                        log(_line(row) + (f" (round {round_})" if args.rounds > 1 else ""))
                        if level.payloads:
                            hits[batching][clients] = {
                                i: [(h["id"], h["score"]) for h in json.loads(p)["hits"]]
                                for i, p in level.payloads.items()
                            }
    finally:
        for batching, server in servers.items():
            stats["on" if batching else "off"] = server.stop()
    return rows, hits, stats


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per endpoint, setting and level: each figure the median over the rounds
    (counts summed)."""
    cells: dict[tuple[str, bool, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["endpoint"], r["batching"], r["clients"]), []).append(r)
    out = []
    for (endpoint, batching, clients), rs in sorted(
        cells.items(), key=lambda kv: (kv[0][0] != "search", not kv[0][1], kv[0][2])
    ):
        row: dict[str, Any] = {"endpoint": endpoint, "batching": batching, "clients": clients}
        for key in ("ok", "http_503", "errors"):
            row[key] = sum(r[key] for r in rs)
        for key in ("p50_ms", "p95_ms", "p99_ms", "rps"):
            row[key] = round(float(np.median([r[key] for r in rs])), 1)
        row["rounds"] = len(rs)
        out.append(row)
    return out


def agreement(
    batched: dict[int, dict[int, list[tuple[str, float]]]],
    reference: dict[int, list[tuple[str, float]]],
) -> dict[str, Any]:
    """Per level: of the requests answered in both runs, how many batched answers equal
    the unbatched one-client answer exactly, have the same ids, and the largest score gap."""
    out = {}
    for clients, answers in batched.items():
        common = [i for i in answers if i in reference]
        same = sum(answers[i] == reference[i] for i in common)
        same_ids = sum([h for h, _ in answers[i]] == [h for h, _ in reference[i]] for i in common)
        gap = max(
            (
                abs(a[1] - b[1])
                for i in common
                for a, b in zip(answers[i], reference[i], strict=False)
                if a[0] == b[0]
            ),
            default=0.0,
        )
        out[str(clients)] = {
            "compared": len(common),
            "identical": same,
            "same_ids": same_ids,
            "max_score_gap": float(f"{gap:.3g}"),
        }
    return out


# --- the report ----------------------------------------------------------------------------------


def cpu_info() -> dict[str, Any]:
    """What ``grep -o -w 'avx2\\|avx512f\\|avx512_vnni' /proc/cpuinfo | sort -u`` prints, and
    the CPU's name."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"flags": [], "model": "unknown", "cpus": os.cpu_count()}
    words = set(re.findall(r"\w+", text))
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return {
        "flags": sorted(f for f in CPU_FLAGS if f in words),
        "model": model.group(1).strip() if model else "unknown",
        "cpus": os.cpu_count(),
    }


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['endpoint']:6} batching {'on ' if row['batching'] else 'off'} "
        f"{row['clients']:3} clients: {row['ok']:5} ok, {row['http_503']:4} 503, "
        f"{row['errors']:3} errors; p50 {row['p50_ms']:7.1f} ms, p95 {row['p95_ms']:7.1f}, "
        f"p99 {row['p99_ms']:7.1f}; {row['rps']:6.1f} req/s"
    )


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| endpoint | batching | clients | ok | 503 | errors | p50 ms | p95 ms | p99 ms | req/s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return head + "".join(
        f"| {r['endpoint']} | {'on' if r['batching'] else 'off'} | {r['clients']} | {r['ok']} "
        f"| {r['http_503']} | {r['errors']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} "
        f"| {r['rps']} |\n"
        for r in rows
    )


def goals(rows: list[dict[str, Any]], clients: int = 16) -> dict[str, Any]:
    """The targets at 16 clients: p50 < 100 ms, p95 < 300 ms, p99 < 500 ms with batching,
    and batching at least 1.5 times the requests/s of no batching."""
    pick = {r["batching"]: r for r in rows if r["endpoint"] == "search" and r["clients"] == clients}
    if True not in pick or False not in pick:
        return {}
    on, off = pick[True], pick[False]
    speedup = on["rps"] / off["rps"] if off["rps"] else float("nan")
    return {
        "clients": clients,
        "p50_ms": [on["p50_ms"], on["p50_ms"] < 100],
        "p95_ms": [on["p95_ms"], on["p95_ms"] < 300],
        "p99_ms": [on["p99_ms"], on["p99_ms"] < 500],
        "speedup": [round(speedup, 2), speedup >= 1.5],
    }


def markdown(result: dict[str, Any]) -> str:
    cpu, col, srv = result["cpu"], result["collection"], result["server"]
    lines = [
        f"`{result['command']}`",
        "",
        f"CPU: {cpu['model']}, {cpu['cpus']} CPUs, flags {' '.join(cpu['flags']) or 'none'}; "
        f"load average {result['load_average_1m']} at the end.",
        f"Collection: {col['chunks']:,} chunks, {col['store']}, {col['embed_model']} "
        f"({col['embed_backend']}).",
        f"Server: gateway without a rate limit, {srv['gateway']['max_in_flight']} requests in "
        f"flight and {srv['gateway']['max_queued']} queued (then 503); batching max "
        f"{srv['batching']['max_batch']}, wait {srv['batching']['max_wait_ms']:g} ms.",
        "",
        table(result["runs"]),
    ]
    stats = result.get("batch_stats", {}).get("on", {})
    for name, s in stats.items():
        lines.append(
            f"Batches ({name}): {s['batches']:,} for {s['requests']:,} searches, mean "
            f"{s['mean_batch']}, largest {s['largest']}."
        )
    for clients, a in result.get("agreement", {}).items():
        lines.append(
            f"Batched vs unbatched hits at {clients} clients: {a['identical']}/{a['compared']} "
            f"identical, {a['same_ids']} same ids, largest score gap {a['max_score_gap']:g}."
        )
    return "\n".join(lines) + "\n"


# --- the command ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.serve_bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="a BEIR corpus.jsonl")
    p.add_argument("--queries", type=Path, help="a BEIR queries.jsonl (default: beside --corpus)")
    p.add_argument("--chunks", type=int, help="passages in the collection (default 100000)")
    p.add_argument("--collection", help="its name (default scifact-<chunks>)")
    p.add_argument("--embed-model")
    p.add_argument("--embed-backend")
    p.add_argument("--levels", help="concurrent clients per level (default 1,4,16,64)")
    p.add_argument("--requests", type=int, help="searches per level (default 600)")
    p.add_argument("--chat-requests", type=int, help="chat requests per level (default 120)")
    p.add_argument("--time-cap", type=float, help="seconds per level at most (default 60)")
    p.add_argument("--k", type=int, default=10, help="passages per search (default 10)")
    p.add_argument("--batch-max", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-in-flight", type=int, default=32, help="the gateway's (default 32)")
    p.add_argument("--max-queued", type=int, default=16, help="the gateway's (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1, help="sweeps of every level; medians reported")
    p.add_argument("--build-only", action="store_true", help="build the collection and stop")
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the JSON, and the .md beside it (default <data dir>/serve_bench.json)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "chunks": 400 if quick else 100_000,
        "levels": "1,4" if quick else "1,4,16,64",
        "requests": 12 if quick else 600,
        "chat_requests": 6 if quick else 120,
        "time_cap": 15.0 if quick else 60.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    args.collection = args.collection or f"scifact-{args.chunks}"
    args.queries = args.queries or args.corpus.with_name("queries.jsonl")
    if args.chunks < 1 or not args.levels or min(args.levels) < 1:
        p.error("--chunks and --levels must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    cpu = cpu_info()
    log(f"CPU: {cpu['model']}; {cpu['cpus']} CPUs; flags: {' '.join(cpu['flags']) or 'none'}")
    collection = build(
        args.data_dir,
        args.corpus,
        args.chunks,
        name=args.collection,
        seed=args.seed,
        embed_model=args.embed_model,
        embed_backend=args.embed_backend,
        log=log,
    )
    if args.build_only:
        return 0
    texts = queries(args.queries, args.seed)
    load = bodies(args, texts)
    log(
        f"server: no rate limit, {args.max_in_flight} in flight, {args.max_queued} queued; "
        f"batching max {args.batch_max}, wait {args.batch_wait_ms:g} ms"
    )
    # Ctrl-C or SIGTERM ends the level under way, stops both servers and the run; a
    # second one stops at once. (The build before is interrupted as usual: it resumes.)
    stop = threading.Event()

    def interrupted(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        rounds, hits, stats = asyncio.run(run_all(args, load, log, stop))
    except KeyboardInterrupt:
        log("stopped: no results written")
        return 130
    runs = medians(rounds)
    reference = hits[False].get(min(args.levels), {})
    result = {
        "cpu": cpu,
        "collection": collection,
        "server": {
            "gateway": {
                "rate_per_minute": None,
                "max_in_flight": args.max_in_flight,
                "max_queued": args.max_queued,
            },
            "batching": {"max_batch": args.batch_max, "max_wait_ms": args.batch_wait_ms},
            "access_log": False,
        },
        "load": {
            "levels": args.levels,
            "requests": args.requests,
            "chat_requests": args.chat_requests,
            "time_cap_s": args.time_cap,
            "k": args.k,
            "seed": args.seed,
            "rounds": args.rounds,
            "queries": len(texts),
        },
        "runs": runs,
        "rounds": rounds,
        "batch_stats": stats,
        "agreement": agreement(hits[True], reference),
        "goals_at_16_clients": goals(runs),
    }
    if args.out is None:
        args.out = args.data_dir / "serve_bench.json"
    write_result(args.out, "eval.serve_bench", argv, result)
    body = json.loads(args.out.read_text())
    md = markdown(body)
    args.out.with_suffix(".md").write_text(md)
    log("")
    log(md)
    if result["goals_at_16_clients"]:
        log(f"goals at 16 clients (value, met): {json.dumps(result['goals_at_16_clients'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
