"""``rag bench --advise``: recommend a store and index settings from measured results.

Method, per configuration measured on synthetic data (else whatever dataset was run):

* **Recall at the target N.** For each value of the search parameter, recall is taken at the
  largest measured N and lowered by the loss per doubling of N seen between the two largest
  measured sizes (never raised), extrapolated in ``log2(N_target / N_measured)``. The
  smallest parameter value whose predicted recall meets the target is chosen.
* **Latency.** A power law ``t = a * N ** b`` fitted (log-log least squares) to the mean
  latency at that parameter over the measured sizes, ``b`` clamped to the family's
  plausible range (HNSW 0-0.35, IVF 0-0.75, exact scans 0.5-1.2: timer noise on a shared
  machine produces any exponent between two small sizes), anchored on the largest
  measurement and scaled by ``dim_target / dim_measured`` (distance computations cost in proportion to the
  dimension). Serial QPS is ``1000 / t_ms``.
* **Memory.** Peak memory (process plus server) at the largest size, plus the per-vector
  slope between the two largest sizes times the added vectors; the slope is scaled by the
  dimension ratio (an upper bound: graph links do not grow with the dimension) and is never
  less than the vectors' own bytes (``4 * dim``, 2 for halfvec), which must sit in RAM,
  in the process or the page cache, to be served at the measured speed. A configuration
  fits when the prediction is under 70% of RAM.
* **Build time.** A power law fitted to the time to a searchable index, scaled by the
  dimension ratio; reported, not used to choose, except that a configuration that already
  ran over budget at a smaller N is excluded.

The recommendation is the configuration with the highest predicted QPS among those that
meet the recall target and fit in memory. Extrapolating far past the measured sizes is
stated as such; the measurements used are printed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from eval.bench_metrics import fit_power, fmt_n

RAM_SHARE = 0.7
#: Plausible growth of query latency with N per index family (fits outside are noise):
#: HNSW logarithmic, IVF with nlist ~ sqrt(N) about sqrt(N), exact scans linear.
EXPONENT_RANGE = {"hnsw": (0.0, 0.35), "ivf": (0.0, 0.75), "flat": (0.5, 1.2), "exact": (0.5, 1.2)}


def _ram_mb() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def predict_recall(points: list[tuple[int, float]], n: int) -> float:
    """Recall at ``n`` from ``(N, recall)`` points of one parameter value."""
    pts = sorted(points)
    n_last, r_last = pts[-1]
    if n <= n_last or len(pts) < 2:
        return r_last if n <= n_last else r_last - 0.0
    n_prev, r_prev = pts[-2]
    loss_per_doubling = max(0.0, (r_prev - r_last) / math.log2(n_last / n_prev))
    return max(0.0, r_last - loss_per_doubling * math.log2(n / n_last))


def _linear(points: list[tuple[int, float]]) -> tuple[float, float]:
    if len(points) == 1:
        n, v = points[0]
        return 0.0, v / n
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    b, a = np.polyfit(x, y, 1)
    return float(a), float(max(b, 0.0))


def evaluate_config(
    recs: list[dict[str, Any]], *, n: int, dim: int, recall: float, ram_mb: float
) -> dict[str, Any] | None:
    ok = sorted(
        (r for r in recs if r.get("status") == "ok" and r.get("sweep")), key=lambda r: r["n"]
    )
    if not ok:
        return None
    name = ok[0]["config"]
    dim_m = int(ok[-1].get("dim") or dim)
    ratio = dim / dim_m
    over = [
        r for r in recs if r.get("status") == "skipped" and "predicted" not in str(r.get("reason"))
    ]
    by_value: dict[Any, list[tuple[int, float]]] = defaultdict(list)
    lat: dict[Any, list[tuple[int, float]]] = defaultdict(list)
    for r in ok:
        for s in r["sweep"]:
            if s.get("recall") is not None:
                by_value[s["value"]].append((int(r["n"]), float(s["recall"])))
            if s.get("mean_ms"):
                lat[s["value"]].append((int(r["n"]), float(s["mean_ms"])))
    chosen = None
    for value in sorted(by_value, key=lambda v: (v is not None, v or 0)):
        pts = by_value[value]
        if max(p[0] for p in pts) != ok[-1]["n"]:
            continue  # not measured at the largest size
        r_pred = predict_recall(pts, n)
        if r_pred >= recall:
            chosen = (value, r_pred)
            break
    out: dict[str, Any] = {
        "config": name,
        "description": ok[-1].get("description", ""),
        "measured": [int(r["n"]) for r in ok],
        "dim_measured": dim_m,
        "options": ok[-1].get("options", {}),
        "param": ok[-1]["sweep"][0].get("param"),
    }
    best_recall = max(predict_recall(p, n) for p in by_value.values())
    out["best_recall"] = best_recall
    if over:
        first = min(over, key=lambda r: r["n"])
        out["excluded"] = f"over budget/memory at {fmt_n(first['n'])} ({first.get('reason')})"
    if chosen is None:
        out["excluded"] = out.get("excluded") or (
            f"predicted recall at most {best_recall:.3f} at {fmt_n(n)}, under {recall}"
        )
        return out
    value, r_pred = chosen
    a, b = fit_power(lat[value])
    lo, hi = EXPONENT_RANGE.get(str(ok[-1].get("family")), (0.0, 1.2))
    b = min(max(b, lo), hi)
    a = lat[value][-1][1] / lat[value][-1][0] ** b  # anchor the curve on the largest measurement
    t_ms = a * n**b * ratio
    mem_pts = [
        (int(r["n"]), float(r.get("peak_rss_max_mb", 0)) + float(r.get("server_peak_max_mb") or 0))
        for r in ok
    ]
    # The slope between the two largest sizes (fixed overhead dominates small ones), never
    # under the vectors themselves: whatever the engine, they must sit in RAM (process or
    # page cache) to be served at the measured speed.
    half = bool((ok[-1].get("options") or {}).get("halfvec") is True)
    floor_mb = dim * (2 if half else 4) / 2**20
    _, m1 = _linear(mem_pts[-2:])
    per_vector = max(m1 * ratio, floor_mb)
    mem = mem_pts[-1][1] + per_vector * (n - mem_pts[-1][0])
    build_pts = [(int(r["n"]), float(r["index_total_s"])) for r in ok if r.get("index_total_s")]
    ba, bb = fit_power(build_pts)
    build = ba * n**bb * ratio
    out.update(
        value=value,
        recall_pred=r_pred,
        latency_ms=t_ms,
        latency_exponent=b,
        qps=1000.0 / t_ms if t_ms > 0 else math.inf,
        memory_mb=mem,
        fits=mem <= RAM_SHARE * ram_mb,
        build_s=build,
        build_exponent=bb,
    )
    if not out["fits"] and "excluded" not in out:
        out["excluded"] = (
            f"predicted memory {mem / 1024:,.1f} GB over {RAM_SHARE:.0%} of RAM ({ram_mb / 1024:,.0f} GB)"
        )
    return out


def advise(
    records: list[dict[str, Any]], *, n: int, dim: int, recall: float, ram_mb: float | None = None
) -> str:
    """The recommendation as text, with its reasoning and the measurements used."""
    ram = ram_mb or _ram_mb()
    if not records:
        return "No measurements: run the benchmark first (python -m eval.bench --out DIR), then --advise with that --out."
    datasets = {r.get("dataset") for r in records}
    dataset = "synthetic" if "synthetic" in datasets else sorted(d for d in datasets if d)[0]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("dataset") == dataset and not r.get("quick"):
            groups[r["config"]].append(r)
    if not groups:  # only quick runs measured
        for r in records:
            if r.get("dataset") == dataset:
                groups[r["config"]].append(r)
    results = [
        e
        for e in (
            evaluate_config(g, n=n, dim=dim, recall=recall, ram_mb=ram) for g in groups.values()
        )
        if e
    ]
    good = sorted((e for e in results if "excluded" not in e), key=lambda e: -e["qps"])
    largest = max((max(e["measured"]) for e in results), default=0)
    lines = [
        f"Target: {fmt_n(n)} vectors of {dim} dimensions, recall@10 >= {recall}; RAM {ram / 1024:,.0f} GB.",
        f"From {sum(len(g) for g in groups.values())} measured jobs on the {dataset} dataset (largest N measured: {fmt_n(largest)}).",
    ]
    if largest and n > 4 * largest:
        lines.append(
            f"Warning: {fmt_n(n)} is {n / largest:,.0f}x the largest measured size; treat the figures as rough."
        )
    lines.append("")
    if good:
        g = good[0]
        setting = f"{g['param']}={g['value']}" if g["param"] else "no search parameter"
        opts = ", ".join(f"{k}={v}" for k, v in g["options"].items())
        lines += [
            f"Recommendation: {g['config']} ({g['description']}), {setting}.",
            f"  build options measured: {opts or 'defaults'} (size-dependent options such as nlist/lists scale with N: see eval/bench_stores.py)",
            f"  predicted recall@10 {g['recall_pred']:.3f}, {g['latency_ms']:.2f} ms/query ({g['qps']:,.0f} QPS serial), "
            f"memory {g['memory_mb'] / 1024:,.1f} GB, build {g['build_s'] / 60:,.0f} min.",
            "",
        ]
    else:
        lines += ["No measured configuration is predicted to meet the target within memory.", ""]
    lines.append("All configurations (best first):")
    for e in good + [e for e in results if "excluded" in e]:
        if "excluded" in e:
            lines.append(f"  - {e['config']}: excluded, {e['excluded']}")
        else:
            param = f"{e['param']}={e['value']}" if e["param"] else "no search parameter"
            lines.append(
                f"  - {e['config']}: {param}, "
                f"recall {e['recall_pred']:.3f}, "
                f"{e['latency_ms']:.2f} ms (latency ~ N^{e['latency_exponent']:.2f}), "
                f"{e['qps']:,.0f} QPS, {e['memory_mb'] / 1024:,.1f} GB, build {e['build_s'] / 60:,.0f} min "
                f"(~ N^{e['build_exponent']:.2f}); measured at {', '.join(fmt_n(x) for x in e['measured'])}"
            )
    lines += ["", "Measurements used (recall@10 / mean ms at the chosen parameter):"]
    for e in good:
        for r in sorted(groups[e["config"]], key=lambda r: r["n"]):
            if r.get("status") != "ok":
                continue
            s = next((s for s in r["sweep"] if s["value"] == e["value"]), None)
            if s:
                lines.append(
                    f"  {e['config']} N={fmt_n(r['n'])}: recall {s['recall']:.3f}, {s.get('mean_ms') or 0:.2f} ms, "
                    f"peak {float(r.get('peak_rss_max_mb', 0)) + float(r.get('server_peak_max_mb') or 0):,.0f} MB, "
                    f"index {r.get('index_total_s', 0):,.0f} s"
                )
    lines += [
        "",
        "Method: see eval/bench_advise.py (recall loss per doubling of N, power-law latency, linear memory; "
        "latency and memory scaled by the dimension ratio).",
    ]
    return "\n".join(lines)
