"""What the query log costs a search: ``Collection.search`` (what ``rag search`` runs once the
process is up) timed with logging off, with the default logging (``none``: numbers only) and
with the most (``text``: the question and its vector too), side by side in one run; and
``bare``, the retriever called as ``Collection.search`` called it before the query log
existed (no hooks at all).

The same corpus is ingested into three collections of one data directory, one per logging
choice (``bare`` searches the ``off`` one), with the default embedder. The queries are real text (SciFact's claims), each one
asked of all four in turn, the order rotating from query to query, so that a slow spell of
this shared machine falls on each alike. The log writer works in the background, partly
during the next call (of any of the four): its own time is measured apart, per event
(``writer_ms_per_event``), and so is what ``rag search`` waits for as it exits, on a fresh
log (the writer's start, the file's creation, one event written: ``cold_flush_ms``) and on
an open one (``flush_at_exit_p50_ms``). The first
``--warmup`` queries of each collection are not timed. The sample corpus (``data/``) is
small on purpose: the log's cost per query is the same on any collection, so the fastest
searches show it largest.

Also timed: the flush that ``rag search`` waits for as it exits (its one event written).

    python -m eval.monitor_overhead --queries 1000
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from eval.bench import DEFAULT_SCIFACT
from eval.datasets import load_beir
from eval.metrics import percentiles
from eval.record import write_result
from rag.config import Settings

ROOT = Path(__file__).resolve().parent.parent
CHOICES = ("bare", "off", "none", "text")


def cpu_flags() -> list[str]:
    """Which of avx2, avx512f and avx512_vnni the CPU has (``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"\b(avx2|avx512f|avx512_vnni)\b", text)))


def cold_flush_ms(work: Path, n: int = 20) -> float:
    """The median time to record one event in a fresh log and flush it: what a ``rag
    search`` process waits for at its exit, the first time (thread start, file creation)."""
    from rag.monitoring import QueryEvent, QueryLog

    times = []
    for i in range(n):
        log = QueryLog(work / f"cold-{i}.sqlite")
        t0 = time.perf_counter()
        log.record(QueryEvent(op="search", mode="dense", k=5, hits=5, top_score=0.5))
        log.flush(30)
        times.append((time.perf_counter() - t0) * 1e3)
        log.close()
    return percentiles(times, (50,))["p50"]


def run(corpus: Path, queries: list[str], *, warmup: int) -> dict[str, Any]:
    from rag.collection import open_collection
    from rag.monitoring import QueryLog

    writer_s = {"total": 0.0, "events": 0}
    real_write = QueryLog._write

    def timed_write(self: QueryLog, db: Any, events: list, ref: Any) -> None:
        t0 = time.perf_counter()
        real_write(self, db, events, ref)
        writer_s["total"] += time.perf_counter() - t0
        writer_s["events"] += len(events)

    QueryLog._write = timed_write  # type: ignore[method-assign]

    work = Path(tempfile.mkdtemp(prefix="ragkit-monitor-overhead-"))
    try:
        cols = {}
        for choice in CHOICES[1:]:
            s = Settings(data_dir=work, collection=f"log-{choice}", log_queries=choice)
            col = open_collection(s, create=True)
            col.ingest([corpus])
            for q in queries[:warmup]:
                col.search(q)
            cols[choice] = col
        cols["bare"] = cols["off"]
        bare = cols["bare"].retriever

        def search(choice: str, q: str) -> None:
            if choice == "bare":  # what Collection.search was: the retriever, no hooks
                bare.search(q, k=cols["off"].settings.k, where=None, mode="dense", mmr=False)
            else:
                cols[choice].search(q)

        for q in queries[:warmup]:
            search("bare", q)
        timed = queries[warmup:]
        ms: dict[str, list[float]] = {c: [] for c in CHOICES}
        logging = ("none", "text")
        flush_ms: dict[str, list[float]] = {c: [] for c in logging}
        for n, q in enumerate(timed):
            for choice in CHOICES[n % 4 :] + CHOICES[: n % 4]:
                t0 = time.perf_counter()
                search(choice, q)
                ms[choice].append((time.perf_counter() - t0) * 1e3)
            if n % 100 == 99:  # what rag search waits for at its exit, on an open log
                for choice in logging:
                    t0 = time.perf_counter()
                    assert cols[choice].querylog.flush(30)
                    flush_ms[choice].append((time.perf_counter() - t0) * 1e3)
        out: dict[str, Any] = {}
        for choice in CHOICES:
            col = cols[choice]
            log = col.querylog
            logged = len(log.events()) if choice in logging else 0
            p = percentiles(ms[choice], (50, 95, 99))
            out[choice] = {
                "queries": len(ms[choice]),
                **{f"{k}_ms": round(v, 3) for k, v in p.items()},
                "mean_ms": round(sum(ms[choice]) / len(ms[choice]), 3),
                "logged_events": logged,
                "dropped": log.dropped if choice in logging else 0,
            }
            if choice in flush_ms:
                out[choice]["flush_at_exit_p50_ms"] = round(
                    percentiles(flush_ms[choice], (50,))["p50"], 3
                )
        for col in set(cols.values()):
            col.close()
        out["writer_ms_per_event"] = round(writer_s["total"] * 1e3 / max(writer_s["events"], 1), 4)
        out["cold_flush_ms"] = round(cold_flush_ms(work), 3)
        for choice in ("off", "none", "text"):
            for base in ("bare", "off"):
                if base != choice:
                    for stat in ("p50", "mean"):
                        out[choice][f"{stat}_ratio_to_{base}"] = round(
                            out[choice][f"{stat}_ms"] / out[base][f"{stat}_ms"], 4
                        )
        return out
    finally:
        QueryLog._write = real_write  # type: ignore[method-assign]
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.monitor_overhead", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--queries", type=int, default=1000, help="timed queries per collection")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--corpus", type=Path, default=ROOT / "data", help="what to ingest")
    p.add_argument("--dataset", type=Path, default=DEFAULT_SCIFACT, help="BEIR folder: queries")
    p.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "monitor_overhead.json")
    args = p.parse_args(argv)

    ds = load_beir(args.dataset, split="train")
    texts = list(ds.queries.values()) + list(load_beir(args.dataset).queries.values())
    need = args.queries + args.warmup
    queries = [texts[i % len(texts)] for i in range(need)]
    started = time.time()
    result = run(args.corpus, queries, warmup=args.warmup)
    body = {
        "cpu_flags": cpu_flags(),
        "corpus": str(args.corpus.resolve().relative_to(ROOT))
        if args.corpus.resolve().is_relative_to(ROOT)
        else str(args.corpus),
        "warmup": args.warmup,
        "seconds": round(time.time() - started, 1),
        "results": result,
    }
    print(json.dumps(body, indent=2))
    write_result(args.out, "eval.monitor_overhead", argv, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
