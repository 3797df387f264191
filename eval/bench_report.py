"""The benchmark's report: PNG plots (matplotlib, Agg) and ``report.md`` with tables.

Plots: recall against serial QPS per store at each N (one line per configuration over its
search-parameter sweep), index build time against N (log-log, cliffs circled), p99 latency
against N, and peak memory against N (the process, plus the PostgreSQL server for pgvector).

Cliffs (``eval/bench_metrics.find_cliffs``) are looked for in three series per
configuration: time to a searchable index (load + build + close; expected linear), median
latency at the default search parameter (expected linear for exact scans, ``N ** 0.5``
for IVF whose lists grow with ``sqrt(N)``, flat for HNSW), and peak memory (linear). A step
that grows at least twice the expected ratio is reported with an explanation computed from
what is known about the engine (pgvector's build-graph estimate against
``maintenance_work_mem``, index size against ``shared_buffers``, data size against the CPU's
last-level cache, memory against RAM), or says that no cause is known. A configuration that
completes at one N and runs over its budget or memory at the next is a cliff too.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from eval.bench_metrics import Cliff, find_cliffs, fmt_n
from eval.bench_stores import PG_DEFAULT_MWM_MB, pg_hnsw_graph_bytes


def _num(v: Any, fmt: str = "{:,.2f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def _mb(text: Any) -> float | None:
    """``"64MB"`` / ``"2GB"`` / 64 -> megabytes."""
    if text is None:
        return None
    s = str(text).strip().upper()
    for suffix, mult in (("GB", 1024.0), ("MB", 1.0), ("KB", 1 / 1024)):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    try:
        return float(s) / 1024  # PostgreSQL's unit for a bare number is kB
    except ValueError:
        return None


def memory_mb(r: dict[str, Any]) -> float | None:
    """Peak memory of a job: the worker's peak RSS plus its server's peak PSS."""
    if r.get("peak_rss_max_mb") is None:
        return None
    return float(r["peak_rss_max_mb"]) + float(r.get("server_peak_max_mb") or 0.0)


def l3_cache_mb() -> float | None:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    return _mb(text.replace("K", "KB").replace("M", "MB"))


def total_ram_mb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def pg_shared_buffers_mb() -> float:
    """What ``vectorstores/pgserver.py`` gives an embedded server: 1/8 of RAM in 128 MB-1 GB."""
    return min(1024.0, max(128.0, total_ram_mb() / 8))


# --- cliffs ------------------------------------------------------------------------------------

LATENCY_EXPONENT = {"flat": 1.0, "exact": 1.0, "ivf": 0.5, "hnsw": 0.0}


def series(records: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    out = []
    for r in records:
        if r.get("status") != "ok":
            continue
        v = memory_mb(r) if metric == "memory" else r.get(metric)
        if v is not None:
            out.append((int(r["n"]), float(v)))
    return sorted(out)


def explain(cliff: Cliff, recs: dict[int, dict[str, Any]]) -> str:
    r1, r2 = recs[cliff.n1], recs[cliff.n2]
    opts = r2.get("options") or {}
    dim = int(r2.get("dim") or 384)
    backend = r2.get("backend")
    ram = total_ram_mb()
    text = _explain(cliff, r1, r2, opts, dim, backend, ram)
    l1, l2 = r1.get("load_avg_mean"), r2.get("load_avg_mean")
    if l1 and l2 and max(l1, l2) > 1.5 * min(l1, l2):
        text += f" (the machine's load average was {l1:.1f} at {fmt_n(cliff.n1)} and {l2:.1f} at {fmt_n(cliff.n2)})"
    return text


def _spill_notice(r: dict[str, Any]) -> str | None:
    for notice in (r.get("last_build") or {}).get("notices") or []:
        if "maintenance_work_mem" in notice:
            return notice
    return None


def _explain(
    cliff: Cliff,
    r1: dict[str, Any],
    r2: dict[str, Any],
    opts: dict[str, Any],
    dim: int,
    backend: Any,
    ram: float,
) -> str:
    if cliff.metric == "index_total_s":
        if backend == "pgvector" and opts.get("index") == "hnsw":
            used = (r2.get("last_build") or {}).get("maintenance_work_mem")
            mwm = _mb(used) or _mb(opts.get("maintenance_work_mem")) or PG_DEFAULT_MWM_MB
            notice = _spill_notice(r2)
            said = f'; pgvector said "{notice}"' if notice else ""
            half = bool(opts.get("halfvec"))
            m = int(opts.get("m", 16))
            g1 = pg_hnsw_graph_bytes(cliff.n1, dim, m=m, halfvec=half) / 2**20
            g2 = pg_hnsw_graph_bytes(cliff.n2, dim, m=m, halfvec=half) / 2**20
            fit = int(mwm * 2**20 / (pg_hnsw_graph_bytes(1, dim, m=m, halfvec=half)))
            if g1 <= mwm < g2:
                return (
                    f"the estimated HNSW build graph grew from {g1:,.0f} MB to {g2:,.0f} MB, past "
                    f"maintenance_work_mem ({mwm:,.0f} MB, room for about {fit:,} vectors): pgvector "
                    f"then inserts the remaining vectors into the on-disk index one by one{said}"
                )
            if g2 > mwm:
                return (
                    f"the build graph ({g2:,.0f} MB estimated) exceeds maintenance_work_mem "
                    f"({mwm:,.0f} MB) at both sizes; past about {fit:,} vectors pgvector inserts "
                    f"into the on-disk graph, whose cost per vector grows with the index{said}"
                )
        if (memory_mb(r2) or 0) > 0.6 * ram:
            return f"peak memory ({memory_mb(r2):,.0f} MB) approached RAM ({ram:,.0f} MB)"
    if cliff.metric == "p50_ms":
        if backend == "pgvector":
            sb = pg_shared_buffers_mb()
            d1, d2 = r1.get("disk_mb") or 0, r2.get("disk_mb") or 0
            if d1 <= sb < d2:
                return (
                    f"the data on disk grew from {d1:,.0f} MB to {d2:,.0f} MB, past shared_buffers "
                    f"({sb:,.0f} MB): index pages now come from the OS cache or disk"
                )
        if r2.get("family") in ("flat", "exact"):
            l3 = l3_cache_mb()
            s1, s2 = cliff.n1 * dim * 4 / 2**20, cliff.n2 * dim * 4 / 2**20
            if l3 and s1 <= l3 < s2:
                return (
                    f"the vectors ({s1:,.0f} -> {s2:,.0f} MB) outgrew the {l3:,.0f} MB last-level "
                    "cache: the scan became memory-bandwidth bound"
                )
        if (
            r2.get("backend") == "qdrant"
            and r2.get("family") == "hnsw"
            and cliff.n1 * dim * 4 < 10e6
        ):
            return (
                "below Qdrant's indexing threshold (10 MB of vectors) the segment has no HNSW and is "
                "searched exactly"
            )
        if (memory_mb(r2) or 0) > 0.6 * ram:
            return f"peak memory ({memory_mb(r2):,.0f} MB) approached RAM ({ram:,.0f} MB)"
    if cliff.metric == "memory" and (memory_mb(r2) or 0) > 0.6 * ram:
        return f"peak memory ({memory_mb(r2):,.0f} MB) approached RAM ({ram:,.0f} MB)"
    return "no known cause; see the raw figures in the tables"


def detect(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every cliff with its explanation, per (dataset, configuration)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r.get("dataset", "?"), r.get("config", "?"))].append(r)
    out = []
    for (dataset, config), recs in sorted(groups.items()):
        ok = {int(r["n"]): r for r in recs if r.get("status") == "ok"}
        if not ok:
            continue
        family = next(iter(ok.values())).get("family", "hnsw")
        checks = [
            ("index_total_s", 1.0, 1.0),
            # The median, not p99: on a shared machine a p99 doubles from noise alone.
            ("p50_ms", LATENCY_EXPONENT.get(family, 0.0), 0.2),
            ("memory", 1.0, 50.0),
        ]
        for metric, exponent, floor in checks:
            for c in find_cliffs(
                series(recs, metric), metric=metric, exponent=exponent, floor=floor
            ):
                out.append(
                    {
                        "dataset": dataset,
                        "config": config,
                        "metric": metric,
                        "n1": c.n1,
                        "n2": c.n2,
                        "observed": c.observed,
                        "expected": c.expected,
                        "text": (
                            f"{_label(metric)} per vector jumped x{c.observed / (c.n2 / c.n1):.1f} "
                            if exponent == 1.0
                            else f"{_label(metric)} grew x{c.observed:.1f} (expected x{c.expected:.1f}) "
                        )
                        + f"from {fmt_n(c.n1)} to {fmt_n(c.n2)}: {explain(c, ok)}",
                    }
                )
        # Completed at one N, over budget or memory at the next: the hardest cliff of all.
        sizes = sorted({int(r["n"]) for r in recs})
        for n1, n2 in itertools.pairwise(sizes):
            r2 = next((r for r in recs if int(r["n"]) == n2), None)
            if (
                n1 in ok
                and r2
                and r2.get("status") == "skipped"
                and "predicted" not in r2.get("reason", "")
                and "already" not in r2.get("reason", "")
            ):
                r1 = ok[n1]
                text = f"completed at {fmt_n(n1)} in {r1.get('job_wall_s', 0):,.0f} s, {r2['reason']} at {fmt_n(n2)}"
                if (
                    r2.get("backend") == "pgvector"
                    and (r2.get("options") or {}).get("index") == "hnsw"
                ):
                    fake = Cliff("index_total_s", n1, n2, 1.0, 10.0, 10.0, 1.0)
                    text += f": {explain(fake, {n1: r1, n2: {**r1, **r2}})}"
                out.append(
                    {
                        "dataset": dataset,
                        "config": config,
                        "metric": "budget",
                        "n1": n1,
                        "n2": n2,
                        "text": text,
                    }
                )
    return out


def _label(metric: str) -> str:
    return {"index_total_s": "build time", "p50_ms": "median latency", "memory": "peak memory"}.get(
        metric, metric
    )


# --- plots -------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_qps(records: list[dict[str, Any]], dataset: str, n: int, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in sorted(records, key=lambda r: r["config"]):
        pts = [(s["recall"], s["qps_serial"]) for s in r.get("sweep", []) if s.get("qps_serial")]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=r["config"])
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries/s (one client, serial)")
    ax.set_yscale("log")
    ax.set_title(f"Recall vs QPS, {dataset}, N={fmt_n(n)}")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_vs_n(
    records: list[dict[str, Any]],
    metric: str,
    ylabel: str,
    title: str,
    path: Path,
    cliffs: list[dict[str, Any]],
    cliff_metric: str | None = None,
) -> None:
    """``metric`` against N per configuration; cliffs found on ``cliff_metric`` (default
    ``metric``) are circled at their upper size."""
    cliff_metric = cliff_metric or metric
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_config: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_config[r["config"]].append(r)
    for config, recs in sorted(by_config.items()):
        pts = series(recs, metric)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        (line,) = ax.plot(xs, ys, marker="o", label=config)
        for c in cliffs:
            if c["config"] == config and c["metric"] == cliff_metric:
                y = dict(pts).get(c["n2"])
                if y is not None:
                    ax.plot([c["n2"]], [y], marker="o", ms=14, mfc="none", mec="red", mew=2)
                    ax.annotate(
                        f"x{c['observed'] / c['expected']:.1f}",
                        (c["n2"], y),
                        color="red",
                        textcoords="offset points",
                        xytext=(6, 6),
                        fontsize=8,
                    )
        skipped = [r for r in recs if r.get("status") == "skipped"]
        if skipped and pts:
            ax.plot(
                [min(int(r["n"]) for r in skipped)],
                [pts[-1][1]],
                marker="x",
                ms=10,
                color=line.get_color(),
                linestyle="none",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (vectors)")
    ax.set_ylabel(ylabel)
    ax.set_title(title + "  (red circle: cliff; x: first size over budget/memory)")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- markdown ----------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def summary_table(records: list[dict[str, Any]]) -> str:
    # One QPS column per client count seen anywhere; a row without one shows "-".
    clients = sorted({c for r in records for c in (r.get("throughput") or {})}, key=int)
    rows = []
    for r in sorted(records, key=lambda r: (r["n"], r["config"])):
        if r.get("status") != "ok":
            continue
        tp = r.get("throughput") or {}
        flt = r.get("filtered") or {}
        build = _num(r.get("build_s"), "{:,.1f}") if r.get("build_s") is not None else "in load"
        rows.append(
            [
                fmt_n(r["n"]),
                r["config"],
                _num(r.get("load_s"), "{:,.1f}"),
                build,
                _num(r.get("index_total_s"), "{:,.1f}"),
                _num(r.get("disk_mb"), "{:,.0f}"),
                _num(r.get("peak_rss_max_mb"), "{:,.0f}"),
                _num(r.get("server_peak_max_mb"), "{:,.0f}"),
                f"{r.get('default', '')}" if r.get("default") is not None else "-",
                _num(r.get("recall"), "{:.3f}"),
                _num(r.get("p50_ms"), "{:.2f}"),
                _num(r.get("p95_ms"), "{:.2f}"),
                _num(r.get("p99_ms"), "{:.2f}"),
                " / ".join(_num((tp.get(c) or {}).get("qps"), "{:,.0f}") for c in clients) or "-",
                " / ".join(_num((flt.get(f) or {}).get("recall"), "{:.3f}") for f in ("1%", "10%")),
                " / ".join(_num((flt.get(f) or {}).get("p50_ms"), "{:.2f}") for f in ("1%", "10%")),
                _num(r.get("load_avg_mean"), "{:.1f}"),
            ]
        )
    header = [
        "N",
        "config",
        "load s",
        "build s",
        "index s",
        "disk MB",
        "peak RSS MB",
        "server MB",
        "param",
        "recall@10",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        f"QPS {'/'.join(clients) or '-'} clients",
        "filtered recall 1%/10%",
        "filtered p50 ms 1%/10%",
        "load avg",
    ]
    return _table(header, rows)


def sweep_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in sorted(records, key=lambda r: (r["config"], r["n"])):
        if r.get("status") != "ok" or not r.get("sweep") or r["sweep"][0].get("param") is None:
            continue
        cells = ", ".join(
            f"{s['value']}: {_num(s.get('recall'), '{:.3f}')} @ {_num(s.get('p50_ms'), '{:.2f}')} ms"
            for s in r["sweep"]
        )
        rows.append([r["config"], fmt_n(r["n"]), r["sweep"][0]["param"], cells])
    return _table(["config", "N", "parameter", "value: recall@10 @ p50"], rows)


def skipped_table(records: list[dict[str, Any]]) -> str:
    rows = [
        [
            fmt_n(r["n"]),
            r.get("dataset", ""),
            r["config"],
            r.get("status", ""),
            str(r.get("reason", "")).replace("|", "/"),
        ]
        for r in sorted(records, key=lambda r: (r["n"], r["config"]))
        if r.get("status") != "ok"
    ]
    return _table(["N", "dataset", "config", "status", "reason"], rows) if rows else "None."


def ground_truth_check(records: list[dict[str, Any]]) -> str:
    """FAISS flat is exact: its recall against the ground truth must be 1.0 everywhere."""
    flat = [r for r in records if r.get("config") == "faiss-flat" and r.get("status") == "ok"]
    if not flat:
        return "FAISS flat was not run, so the ground truth was not checked."
    values = []
    for r in flat:
        values.append(r.get("recall"))
        values += [(r.get("filtered") or {}).get(f, {}).get("recall") for f in ("1%", "10%")]
    values = [v for v in values if v is not None]
    sizes = ", ".join(f"{r['dataset']} {fmt_n(r['n'])}" for r in sorted(flat, key=lambda r: r["n"]))
    if values and min(values) >= 1.0:
        return f"FAISS flat (exact) recall@10 is 1.000 in all {len(values)} measurements ({sizes}), filtered included."
    return (
        f"**FAILED**: FAISS flat (exact) recall@10 fell to {min(values):.4f} ({sizes}); the ground "
        "truth or the recall computation is wrong."
    )


def synthetic_vs_real(records: list[dict[str, Any]]) -> str:
    """Recall per sweep value of the same configuration on synthetic and on real (scifact)
    vectors of the same N."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("sweep")]
    real = {(r["config"], r["n"]): r for r in ok if r.get("dataset") == "scifact"}
    lines = []
    for r in sorted(ok, key=lambda r: (r["config"], r["n"])):
        if r.get("dataset") != "synthetic" or (r["config"], r["n"]) not in real:
            continue
        other = {s["value"]: s for s in real[(r["config"], r["n"])]["sweep"]}
        rows = []
        diffs = []
        for s in r["sweep"]:
            o = other.get(s["value"])
            if o is None:
                continue
            diffs.append(abs(s["recall"] - o["recall"]))
            rows.append(
                [
                    str(s["value"]),
                    f"{s['recall']:.3f}",
                    f"{o['recall']:.3f}",
                    f"{s['recall'] - o['recall']:+.3f}",
                    _num(s.get("p50_ms"), "{:.2f}"),
                    _num(o.get("p50_ms"), "{:.2f}"),
                ]
            )
        if rows:
            param = r["sweep"][0]["param"]
            stats = []
            for label, rec in (("synthetic", r), ("SciFact", real[(r["config"], r["n"])])):
                st = rec.get("dataset_stats") or {}
                if "lid20" in st:
                    stats.append(f"{label}: LID {st['lid20']}, relative contrast {st['contrast']}")
            lines.append(
                f"**{r['config']}, N={fmt_n(r['n'])}** (largest recall gap {max(diffs):.3f})\n"
            )
            if stats:
                lines.append("Difficulty (median over queries): " + "; ".join(stats) + ".\n")
            lines.append(
                _table(
                    [
                        param,
                        "recall synthetic",
                        "recall SciFact (MiniLM)",
                        "diff",
                        "p50 ms synthetic",
                        "p50 ms SciFact",
                    ],
                    rows,
                )
            )
            lines.append("")
    return "\n".join(lines) if lines else ""


METHODOLOGY = """\
* **Adapters.** Every configuration is a production store from the `ragkit.stores` plugins
  opened with a `StoreConfig` (options listed per configuration below); the benchmark has no
  client code of its own.
* **Data.** Synthetic vectors: a clustered mixture on the unit sphere (one cluster per
  ~1,000 vectors, each spread in a random 16-dimensional subspace plus isotropic noise,
  normalised; seed 42), queries drawn from the same mixture but not in the base set. Real
  vectors: SciFact abstracts cut into titles, sentences and two-sentence windows (89,548
  passages), embedded with all-MiniLM-L6-v2 through `rag.embeddings`, queries are the 1,109
  SciFact claims. ann-benchmarks HDF5 files can be given with `--datasets hdf5:PATH`.
  Exact ground truth: FAISS `IndexFlatIP`, top 100, for all rows and for the 1% (`bucket ==
  7`) and 10% (`bucket < 10`) subsets.
* **One process per job.** Each (configuration, N) runs in its own worker process, killed by
  the parent past its budget or memory limit, so peak RSS is per configuration. Base
  vectors are read with `pread` (not memory-mapped) so that they never count in RSS.
* **Load** is `upsert` in batches of `--batch` rows (10,000 by default; ids are UUIDs, text empty, metadata `{"bucket":
  i % 100}`). **Build** is the adapter's public build step (`optimize()` for Qdrant's
  in-process engine, which also builds every 20k points during the load) plus `close()`;
  FAISS and Chroma build while inserting, so their build time is inside "load". "index s"
  is load + build + close: the time from the first upsert to a searchable, persisted index.
* **Search**: for each value of the search parameter the store is reopened with it, 20
  warm-up queries are run, then up to `--queries` queries (1,000 by default) one at a
  time (`k=10`), each timed (p50/p95/p99). Recall@10 counts ties at the 10th distance as hits
  (ann-benchmarks' rule). Filtered search and throughput use the default parameter.
* **Throughput**: `--clients` concurrent client threads (1, 2 and 4 by default), each count
  for `--throughput-seconds`. Threads share one store
  object for the in-process engines (as an application server would): the FAISS and Qdrant
  adapters serialise calls under a lock and Python holds the GIL outside the engines, so
  these figures show what the adapter delivers, not the engine's parallel ceiling.
  pgvector clients each open their own store (their own connection).
* **Memory**: the kernel's peak RSS of the worker (`VmHWM`, reset per phase), plus, for
  pgvector's embedded server, the peak sum of the proportional set size (PSS) of the
  postmaster and its children, sampled every second.
* **Disk**: the size of the store's folder after `close()`; for pgvector, the database's
  tables and indexes (`base/`), with the whole cluster (WAL and catalogs included) as
  `disk_total_mb` in the JSONL.
* **Noise**: the machine is shared. "load avg" is the mean 1-minute load average during the
  job: above the core count, other work competed for the CPU and the timings are slower
  than on an idle machine. Workers run with `OMP_WAIT_POLICY=PASSIVE`: with OpenMP's
  default spinning, a 10k-vector FAISS flat query took 70 ms instead of 1.7 ms at load 10.
"""


def write_report(out: Path, records: list[dict[str, Any]], *, command: str) -> Path:
    """Write the plots and ``report.md`` into ``out``; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cliffs = detect(records)
    parts = ["# Vector-store benchmark", ""]
    cmds = sorted({r.get("command") for r in records if r.get("command")})
    parts += ["Produced by:", "", "```", *(cmds or [command]), "```", ""]
    hosts = [r.get("host") for r in records if r.get("host")]
    if hosts:
        h = hosts[-1]
        parts += [f"Host: {h.get('cpus')} CPUs ({h.get('cpu')}), {h.get('mem_gb')} GB RAM.", ""]
    versions = next((r.get("versions") for r in reversed(records) if r.get("versions")), None)
    if versions:
        parts += [
            "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
            "",
        ]
    datasets = sorted({r.get("dataset", "?") for r in records})
    for dataset in datasets:
        recs = [r for r in records if r.get("dataset") == dataset]
        tag = dataset.replace(":", "_").replace("/", "_")
        parts += [f"## Dataset: {dataset}", ""]
        parts += [summary_table(recs), ""]
        parts += [
            'Build "in load": the engine builds while inserting. QPS: queries/s with that many '
            "concurrent clients. Filtered: recall@10 against the filtered exact top 10.",
            "",
        ]
        plots = [
            (
                f"build_vs_n_{tag}.png",
                "index_total_s",
                "seconds (load + build + close)",
                "Time to a searchable index vs N",
            ),
            (
                f"p99_vs_n_{tag}.png",
                "p99_ms",
                "p99 latency, ms (default parameter)",
                "p99 latency vs N (cliffs judged on the median)",
            ),
            (f"memory_vs_n_{tag}.png", "memory", "peak MB (process + server)", "Peak memory vs N"),
        ]
        ns = sorted({int(r["n"]) for r in recs if r.get("status") == "ok"})
        for fname, metric, ylabel, title in plots:
            if len(ns) >= 1:
                plot_vs_n(
                    [r for r in recs if r.get("dataset") == dataset],
                    metric,
                    ylabel,
                    f"{title} ({dataset})",
                    out / fname,
                    [c for c in cliffs if c["dataset"] == dataset],
                    "p50_ms" if metric == "p99_ms" else None,
                )
                parts += [f"![{title}]({fname})", ""]
        for n in ns:
            fname = f"recall_qps_{tag}_{fmt_n(n)}.png"
            plot_recall_qps(
                [r for r in recs if r.get("status") == "ok" and int(r["n"]) == n],
                dataset,
                n,
                out / fname,
            )
            parts += [f"![Recall vs QPS at {fmt_n(n)}]({fname})", ""]
        parts += ["### Search-parameter sweeps", "", sweep_table(recs), ""]
    parts += ["## Ground-truth check", "", ground_truth_check(records), ""]
    parts += ["## Cliffs", ""]
    if cliffs:
        parts += [f"* **{c['config']}** ({c['dataset']}): {c['text']}" for c in cliffs]
    else:
        parts += ["No step grew twice faster than its expected scaling."]
    parts += ["", "## Skipped and failed jobs", "", skipped_table(records), ""]
    svr = synthetic_vs_real(records)
    if svr:
        parts += ["## Synthetic vs real embeddings", "", svr, ""]
    parts += ["## Configurations", ""]
    seen = {}
    for r in records:
        seen.setdefault(r["config"], r)
    parts += [
        f"* `{c}`: {r.get('description', '')}; backend `{r.get('backend')}`"
        for c, r in sorted(seen.items())
    ]
    parts += ["", "## Methodology", "", METHODOLOGY]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
