"""``rag bench --advise``: recommend a store and index settings from measured results.

Method, per configuration measured on synthetic data (else whatever dataset was run):

* **How far.** Nothing is predicted past what was measured: a target N above the largest
  measured N is refused (:class:`NoAdvice`, naming the sizes measured), unless
  ``max_factor`` (``--max-extrapolation``) allows that many times the largest size. A
  configuration measured only at smaller sizes than the others (one that ran over its
  budget, say) is excluded on the same rule. The rule is there because the recall model
  below is optimistic past its data. For FAISS HNSW at ef 64 it predicts 0.995 at 100k from
  the sweep's 10k and 30k (measured: 0.962) and 0.897 at 1M from its 30k and 100k
  (measured: 0.724); advice from a quick run's 20k predicted 0.967 at 1M. HNSW loses recall
  faster the larger the graph.
* **Recall at the target N.** For each value of the search parameter, recall is
  interpolated in ``log2(N)`` between the measured sizes around the target (the smallest
  measured size's recall below it). Past the largest size, where allowed, it is lowered by
  the loss per doubling of N seen between the two largest measured sizes (never raised),
  extrapolated in ``log2(N_target / N_measured)``. The smallest parameter value whose
  predicted recall meets the target is chosen.
* **Latency.** A power law ``t = a * N ** b`` fitted (log-log least squares) to the median
  latency at that parameter over the measured sizes (the mean where a record has no
  median), ``b`` clamped to the family's
  plausible range (HNSW 0-0.35, IVF 0-0.75, exact scans 0.5-1.2: timer noise on a shared
  machine produces any exponent between two small sizes), anchored on the largest
  measurement and scaled by ``dim_target / dim_measured`` (distance computations cost in proportion to the
  dimension). Serial QPS is ``1000 / t_ms``. Recall is not scaled: it was measured at the
  measured dimension only, which the advice says when the two differ.
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
meet the recall target and fit in memory; the measurements used are printed.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np

from eval.bench_metrics import fit_power, fmt_n
from rag.errors import ConfigError, RagError

RAM_SHARE = 0.7
#: By default nothing is predicted past the largest measured N.
DEFAULT_MAX_FACTOR = 1.0
#: Plausible growth of query latency with N per index family (fits outside are noise):
#: HNSW logarithmic, IVF with nlist ~ sqrt(N) about sqrt(N), exact scans linear.
EXPONENT_RANGE = {"hnsw": (0.0, 0.35), "ivf": (0.0, 0.75), "flat": (0.5, 1.2), "exact": (0.5, 1.2)}


class NoAdvice(RagError):
    """Nothing to advise from: no measurements, or none that reach the target size."""


def _ram_mb() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def predict_recall(points: list[tuple[int, float]], n: int) -> float:
    """Recall at ``n`` from ``(N, recall)`` points of one parameter value: interpolated in
    ``log2(N)`` within the measured sizes, the smallest size's below them, and past the
    largest the loss per doubling between the two largest sizes carried on."""
    pts = sorted(points)
    n_first, r_first = pts[0]
    if n <= n_first:
        return r_first
    for (n1, r1), (n2, r2) in itertools.pairwise(pts):
        if n <= n2:
            return r1 + (r2 - r1) * math.log2(n / n1) / math.log2(n2 / n1)
    n_last, r_last = pts[-1]
    if len(pts) < 2:
        return r_last
    n_prev, r_prev = pts[-2]
    loss_per_doubling = max(0.0, (r_prev - r_last) / math.log2(n_last / n_prev))
    return max(0.0, r_last - loss_per_doubling * math.log2(n / n_last))


def _latency_ms(point: dict[str, Any]) -> float | None:
    value = point.get("p50_ms") or point.get("mean_ms")
    return float(value) if value else None


def _linear(points: list[tuple[int, float]]) -> tuple[float, float]:
    if len(points) == 1:
        n, v = points[0]
        return 0.0, v / n
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    b, a = np.polyfit(x, y, 1)
    return float(a), float(max(b, 0.0))


def evaluate_config(
    recs: list[dict[str, Any]],
    *,
    n: int,
    dim: int,
    recall: float,
    ram_mb: float,
    max_factor: float = DEFAULT_MAX_FACTOR,
) -> dict[str, Any] | None:
    ok = sorted(
        (r for r in recs if r.get("status") == "ok" and r.get("sweep")), key=lambda r: r["n"]
    )
    if not ok:
        return None
    name = ok[0]["config"]
    dim_m = int(ok[-1].get("dim") or dim)
    ratio = dim / dim_m
    largest = int(ok[-1]["n"])
    over = [
        r for r in recs if r.get("status") == "skipped" and "predicted" not in str(r.get("reason"))
    ]
    by_value: dict[Any, list[tuple[int, float]]] = defaultdict(list)
    lat: dict[Any, list[tuple[int, float]]] = defaultdict(list)
    for r in ok:
        for s in r["sweep"]:
            if s.get("recall") is not None:
                by_value[s["value"]].append((int(r["n"]), float(s["recall"])))
            ms = _latency_ms(s)
            if ms:
                lat[s["value"]].append((int(r["n"]), ms))
    chosen = None
    for value in sorted(by_value, key=lambda v: (v is not None, v or 0)):
        pts = by_value[value]
        if max(p[0] for p in pts) != largest or not lat[value]:
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
    elif n > max_factor * largest:
        out["excluded"] = (
            f"measured only up to {fmt_n(largest)}: {fmt_n(n)} is {n / largest:,.1f}x past it "
            f"(--max-extrapolation {max_factor:g})"
        )
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
        (
            int(r["n"]),
            float(r.get("peak_rss_max_mb") or 0) + float(r.get("server_peak_max_mb") or 0),
        )
        for r in ok
    ]
    # The slope between the two largest sizes (fixed overhead dominates small ones), never
    # under the vectors themselves: whatever the engine, they must sit in RAM (process or
    # page cache) to be served at the measured speed.
    half = bool((ok[-1].get("options") or {}).get("halfvec") is True)
    floor_mb = dim * (2 if half else 4) / 2**20
    _, m1 = _linear(mem_pts[-2:])
    per_vector = max(m1 * ratio, floor_mb)
    mem = mem_pts[-1][1] + per_vector * max(0, n - mem_pts[-1][0])
    build_pts = [(int(r["n"]), float(r["index_total_s"])) for r in ok if r.get("index_total_s")]
    ba, bb = fit_power(build_pts)
    build = ba * n**bb * ratio
    out.update(
        value=value,
        recall_pred=r_pred,
        latency_ms=t_ms,
        latency_exponent=b,
        qps=1000.0 / t_ms if t_ms > 0 else None,
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


def _groups(records: list[dict[str, Any]]) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """The dataset advised from (synthetic if measured) and its records per configuration;
    quick runs only when nothing else was measured."""
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
    return dataset, groups


def advise_data(
    records: list[dict[str, Any]],
    *,
    n: int,
    dim: int,
    recall: float,
    ram_mb: float | None = None,
    max_factor: float = DEFAULT_MAX_FACTOR,
    source: str = "the results",
) -> dict[str, Any]:
    """The advice as data: the target, what was measured, every configuration's prediction
    or reason for exclusion, and the recommendation (``None`` when none qualifies).

    Raises :class:`NoAdvice` when ``records`` hold no completed measurement, or when ``n``
    is more than ``max_factor`` times the largest N measured."""
    ram = ram_mb or _ram_mb()
    if max_factor < 1:
        raise ConfigError(f"--max-extrapolation must be at least 1, got {max_factor:g}")
    dataset, groups = _groups(records) if any(r.get("dataset") for r in records) else ("", {})
    ok_sizes = sorted({int(r["n"]) for g in groups.values() for r in g if r.get("status") == "ok"})
    if not ok_sizes:
        raise NoAdvice(f"nothing to advise from: no completed measurement in {source}")
    largest = ok_sizes[-1]
    dims = sorted({int(r.get("dim") or 0) for g in groups.values() for r in g} - {0})
    measured = (
        f"{dataset} dataset, {'/'.join(map(str, dims))}-d, at "
        f"{', '.join(fmt_n(x) for x in ok_sizes)}"
    )
    if n > max_factor * largest:
        limit = (
            "the largest size measured"
            if max_factor == 1
            else f"{max_factor:g}x the largest size measured"
        )
        raise NoAdvice(
            f"{fmt_n(n)} vectors is {n / largest:,.1f}x the largest size measured: the "
            f"measurements in {source} go up to {fmt_n(largest)} ({measured}), and the "
            f"advisor does not predict past {limit}. Run the benchmark at that size "
            f"(rag bench --sizes {fmt_n(n).lower()}), or pass --max-extrapolation "
            f"{math.ceil(n / largest)} to extrapolate anyway (recall predicted past the "
            "measured sizes is optimistic)"
        )
    results = [
        e
        for e in (
            evaluate_config(g, n=n, dim=dim, recall=recall, ram_mb=ram, max_factor=max_factor)
            for g in groups.values()
        )
        if e
    ]
    good = sorted((e for e in results if "excluded" not in e), key=lambda e: -(e["qps"] or 0))
    return {
        "target": {"n": n, "dim": dim, "recall": recall, "ram_mb": round(ram)},
        "source": source,
        "dataset": dataset,
        "jobs": sum(len(g) for g in groups.values()),
        "sizes_measured": ok_sizes,
        "dims_measured": dims,
        "largest_measured": largest,
        "extrapolation": n / largest if n > largest else None,
        "max_extrapolation": max_factor,
        "recommendation": good[0] if good else None,
        "configurations": good + [e for e in results if "excluded" in e],
        "measurements": {
            e["config"]: [
                {
                    "n": int(r["n"]),
                    "recall": s.get("recall"),
                    "ms": _latency_ms(s),
                    "peak_mb": float(r.get("peak_rss_max_mb") or 0)
                    + float(r.get("server_peak_max_mb") or 0),
                    "index_s": r.get("index_total_s"),
                }
                for r in sorted(groups[e["config"]], key=lambda r: r["n"])
                if r.get("status") == "ok"
                for s in r["sweep"]
                if s.get("value") == e["value"]
            ]
            for e in good
        },
    }


def advise(
    records: list[dict[str, Any]],
    *,
    n: int,
    dim: int,
    recall: float,
    ram_mb: float | None = None,
    max_factor: float = DEFAULT_MAX_FACTOR,
    source: str = "the results",
) -> str:
    """The recommendation as text, with its reasoning and the measurements used."""
    return render(
        advise_data(
            records,
            n=n,
            dim=dim,
            recall=recall,
            ram_mb=ram_mb,
            max_factor=max_factor,
            source=source,
        )
    )


def render(data: dict[str, Any]) -> str:
    t = data["target"]
    n, dim, largest = t["n"], t["dim"], data["largest_measured"]
    lines = [
        f"Target: {fmt_n(n)} vectors of {dim} dimensions, recall@10 >= {t['recall']}; "
        f"RAM {t['ram_mb'] / 1024:,.0f} GB.",
        f"From {data['jobs']} measured jobs in {data['source']}: the {data['dataset']} dataset, "
        f"{'/'.join(map(str, data['dims_measured']))}-d, at "
        f"{', '.join(fmt_n(x) for x in data['sizes_measured'])} "
        f"(largest N measured: {fmt_n(largest)}).",
    ]
    if data["extrapolation"]:
        lines.append(
            f"Warning: {fmt_n(n)} is {data['extrapolation']:,.1f}x the largest measured size "
            f"(allowed by --max-extrapolation {data['max_extrapolation']:g}); predicted recall "
            "past the measurements is optimistic."
        )
    if data["dims_measured"] and dim not in data["dims_measured"]:
        lines.append(
            f"Recall was measured on {'/'.join(map(str, data['dims_measured']))}-d vectors; "
            f"latency and memory are scaled to {dim}-d, recall is not."
        )
    lines.append("")
    g = data["recommendation"]
    if g:
        setting = f"{g['param']}={g['value']}" if g["param"] else "no search parameter"
        opts = ", ".join(f"{k}={v}" for k, v in g["options"].items())
        lines += [
            f"Recommendation: {g['config']} ({g['description']}), {setting}.",
            f"  build options measured: {opts or 'defaults'} (size-dependent options such as nlist/lists scale with N: see eval/bench_stores.py)",
            f"  predicted recall@10 {g['recall_pred']:.3f}, {g['latency_ms']:.2f} ms/query ({_qps(g)} QPS serial), "
            f"memory {g['memory_mb'] / 1024:,.1f} GB, build {g['build_s'] / 60:,.0f} min.",
            "",
        ]
    else:
        lines += ["No measured configuration is predicted to meet the target within memory.", ""]
    lines.append("All configurations (best first):")
    for e in data["configurations"]:
        if "excluded" in e:
            lines.append(f"  - {e['config']}: excluded, {e['excluded']}")
        else:
            param = f"{e['param']}={e['value']}" if e["param"] else "no search parameter"
            lines.append(
                f"  - {e['config']}: {param}, "
                f"recall {e['recall_pred']:.3f}, "
                f"{e['latency_ms']:.2f} ms (latency ~ N^{e['latency_exponent']:.2f}), "
                f"{_qps(e)} QPS, {e['memory_mb'] / 1024:,.1f} GB, build {e['build_s'] / 60:,.0f} min "
                f"(~ N^{e['build_exponent']:.2f}); measured at {', '.join(fmt_n(x) for x in e['measured'])}"
            )
    lines += ["", "Measurements used (recall@10 / median ms at the chosen parameter):"]
    for config, rows in data["measurements"].items():
        for m in rows:
            lines.append(
                f"  {config} N={fmt_n(m['n'])}: recall {m['recall']:.3f}, {m['ms'] or 0:.2f} ms, "
                f"peak {m['peak_mb']:,.0f} MB, index {m['index_s'] or 0:,.0f} s"
            )
    lines += [
        "",
        "Method: see eval/bench_advise.py (no prediction past the measured sizes unless "
        "--max-extrapolation allows it; recall interpolated in log N, power-law latency, "
        "linear memory; latency and memory scaled by the dimension ratio).",
    ]
    return "\n".join(lines)


def _qps(e: dict[str, Any]) -> str:
    return f"{e['qps']:,.0f}" if e.get("qps") else "-"
