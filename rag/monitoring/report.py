"""Health signals from a query log: latency, capacity, errors, retrieval health and drift.

:func:`build_report` reads a window of a collection's query log (:class:`Window`: the last
hour, day, or N queries) and states each signal as ``ok``, ``watch`` or ``alert`` with the
figures that decided it (``n/a`` when there is nothing to judge yet, with why):

* ``latency.<stage>`` (``embed``, ``search``, ``rewrite``, ``retrieve``, ``generate``,
  ``first_token``) and ``latency.total.<op>``: the window's P95 against the baseline's
  P95. Alert over ``latency_factor`` times it (2), watch over halfway there (1.5).
* ``capacity.<op>``: what one worker can serve, ``1 / mean(total latency)``, against the
  baseline's. Alert under ``capacity_share`` of it (80%), watch under halfway (90%).
* ``errors``, ``empty`` (searches that found nothing), ``out_of_coverage`` (dense searches
  whose best passage scores under the corpus's low-score threshold, :mod:`~.drift`) and
  ``uncited`` (answers, not abstentions, that cite no passage): a share of the window's
  calls. Alert when it is over its threshold (``error_rate`` 1%, the others
  ``anomaly_rate`` 5%) beyond doubt: the lower end of its 95% Wilson interval is over the
  threshold; watch when the share is over the threshold but could still be chance.
* ``drift.topics``: the PSI of the queries' nearest centroids against the reference
  window's; ``drift.scores``: the PSI of the top-1 dense scores (in ten bins cut at the
  reference's deciles); ``drift.corpus``: the PSI of the corpus's centroid counts at the
  last ingest against the reference's. Watch over ``psi_watch`` (0.1), alert over
  ``psi_alert`` (0.2); a window of fewer than ``min_queries`` (30) queries is not judged.

The baseline the window is held against is the query reference: the one ``rag monitor
baseline`` took (:func:`take_baseline`), else the first ``reference_queries`` (200) queries
logged after the corpus reference was taken.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rag.errors import ConfigError
from rag.monitoring.baseline import (
    LATENCY_STAGES,
    current_query_reference,
    dense_scores,
    stage_values,
    topic_counts,
)
from rag.monitoring.drift import CorpusReference
from rag.monitoring.events import OPS
from rag.monitoring.querylog import QueryLog
from rag.monitoring.stats import bin_counts, percentile, psi

STATES = ("ok", "watch", "alert", "n/a")
_RANK = {"n/a": 0, "ok": 1, "watch": 2, "alert": 3}


@dataclass(frozen=True)
class Thresholds:
    """When a signal is watched or raised (see the module docstring); each is a setting of
    ``rag monitor``."""

    latency_factor: float = 2.0
    capacity_share: float = 0.8
    error_rate: float = 0.01
    anomaly_rate: float = 0.05
    psi_watch: float = 0.1
    psi_alert: float = 0.2
    reference_queries: int = 200
    min_queries: int = 30

    def __post_init__(self) -> None:
        if not self.latency_factor > 1:
            raise ConfigError(f"the latency factor must be over 1, got {self.latency_factor}")
        for name in ("capacity_share", "error_rate", "anomaly_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0 < self.psi_watch < self.psi_alert:
            raise ConfigError(
                f"PSI thresholds must be 0 < watch < alert, got {self.psi_watch}, {self.psi_alert}"
            )
        if self.min_queries < 1 or self.reference_queries < self.min_queries:
            raise ConfigError(
                "min_queries must be at least 1 and reference_queries at least min_queries"
            )


@dataclass(frozen=True)
class Window:
    """The stretch of the log a report reads: the last ``seconds``, or the last ``count``
    queries, or everything."""

    seconds: float | None = None
    count: int | None = None

    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}  # noqa: RUF012

    @classmethod
    def parse(cls, text: str) -> Window:
        """``1h``, ``30m``, ``1d``, ``2w`` (a time), ``500`` (queries) or ``all``."""
        t = text.strip().lower()
        if t == "all":
            return cls()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", t)
        if m and float(m.group(1)) > 0:
            return cls(seconds=float(m.group(1)) * cls._UNITS[m.group(2)])
        m = re.fullmatch(r"(\d+)\s*(q|queries)?", t)
        if m and int(m.group(1)) > 0:
            return cls(count=int(m.group(1)))
        raise ConfigError(
            f"unknown window {text!r}: a time (30m, 1h, 1d, 2w), a number of queries (500), or all"
        )

    def describe(self) -> str:
        if self.count is not None:
            return f"last {self.count} queries"
        if self.seconds is not None:
            for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
                if self.seconds >= size and self.seconds % size == 0:
                    return f"last {int(self.seconds // size)}{unit}"
            return f"last {self.seconds:g}s"
        return "all"

    def events(self, log: QueryLog) -> list[dict[str, Any]]:
        since = None if self.seconds is None else time.time() - self.seconds
        return log.events(since=since, last=self.count)


@dataclass
class Signal:
    """One health signal: its state, the window's figure, the baseline's, and why."""

    name: str
    state: str
    value: float | None
    reference: float | None
    why: str


@dataclass
class Report:
    """What ``rag monitor`` prints."""

    collection: str
    window: str
    queries: int
    state: str
    signals: list[Signal]
    #: P50/P95/P99 (seconds) and count of each stage in the window.
    stages: dict[str, dict[str, float]]
    policy: str
    dropped: int
    baseline: str
    #: The window's out-of-coverage questions, newest first (only with ``text`` logging).
    out_of_coverage: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def signal(self, name: str) -> Signal:
        for s in self.signals:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_text(self) -> str:
        lines = [
            f"collection {self.collection}: {self.state.upper()} "
            f"({self.queries} queries, {self.window}; baseline: {self.baseline})",
            f"query logging: {self.policy}"
            + (f", {self.dropped} events dropped" if self.dropped else ""),
            "",
        ]
        for s in self.signals:
            lines.append(f"  {s.state:<5}  {s.name:<24} {s.why}")
        if self.stages:
            lines += ["", "  stage          count     p50 ms    p95 ms    p99 ms"]
            for name, st in self.stages.items():
                lines.append(
                    f"  {name:<13} {int(st['count']):>6} {st['p50'] * 1e3:>10.1f}"
                    f"{st['p95'] * 1e3:>10.1f}{st['p99'] * 1e3:>10.1f}"
                )
        if self.out_of_coverage:
            lines += ["", "  out of coverage (newest first):"]
            for q in self.out_of_coverage:
                lines.append(f"    {q['score']:.3f}  {q['query']}")
        return "\n".join(lines)


# --- the signals -------------------------------------------------------------------------------


def wilson_low(hits: int, n: int, z: float = 1.96) -> float:
    """The lower end of the Wilson score interval of the share ``hits / n``."""
    if n == 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def rate_signal(name: str, hits: int, n: int, threshold: float, what: str) -> Signal:
    """A share judged against ``threshold`` (see the module docstring)."""
    if n == 0:
        return Signal(name, "n/a", None, threshold, f"no {what} in the window")
    share = hits / n
    low = wilson_low(hits, n)
    if share <= threshold:
        state = "ok"
    elif low > threshold:
        state = "alert"
    else:
        state = "watch"
    why = f"{share:.1%} ({hits} of {n} {what}), threshold {threshold:.1%}"
    if state == "watch":
        why += f"; could be chance (95% interval from {low:.1%})"
    return Signal(name, state, share, threshold, why)


def psi_signal(
    name: str, expected: Sequence[int], actual: Sequence[int], th: Thresholds, what: str
) -> Signal:
    if sum(actual) < th.min_queries:
        return Signal(
            name, "n/a", None, None, f"{sum(actual)} {what}: too few (under {th.min_queries})"
        )
    if sum(expected) == 0:
        return Signal(name, "n/a", None, None, f"no {what} in the reference")
    value = psi(expected, actual)
    state = "alert" if value > th.psi_alert else "watch" if value > th.psi_watch else "ok"
    return Signal(
        name,
        state,
        value,
        th.psi_alert,
        f"PSI {value:.3f} over {sum(actual)} {what} (watch > {th.psi_watch}, "
        f"alert > {th.psi_alert})",
    )


def _ratio_state(ratio: float, alert: float, higher_is_worse: bool) -> str:
    watch = (1 + alert) / 2
    if higher_is_worse:
        return "alert" if ratio > alert else "watch" if ratio > watch else "ok"
    return "alert" if ratio < alert else "watch" if ratio < watch else "ok"


def latency_signals(
    events: Sequence[dict[str, Any]], qref: dict[str, Any] | None, th: Thresholds
) -> list[Signal]:
    out = []
    keys = [(s, s, None) for s in LATENCY_STAGES] + [(f"total.{o}", "total", o) for o in OPS]
    for key, stage, op in keys:
        vals = stage_values(events, stage, op)
        if not vals:
            continue
        name = f"latency.{key}"
        p95 = percentile(vals, 95)
        base = None if qref is None else qref["latency_p95"].get(key)
        if len(vals) < th.min_queries:
            out.append(Signal(name, "n/a", p95, base, f"{len(vals)} calls: too few"))
        elif not base:
            out.append(Signal(name, "n/a", p95, None, "no baseline yet"))
        else:
            ratio = p95 / base
            state = _ratio_state(ratio, th.latency_factor, higher_is_worse=True)
            why = (
                f"P95 {p95 * 1e3:.1f} ms, {ratio:.2f}x the baseline's {base * 1e3:.1f} ms "
                f"(alert over {th.latency_factor:g}x)"
            )
            out.append(Signal(name, state, p95, base, why))
    for op in OPS:
        vals = stage_values(events, "total", op)
        base_mean = None if qref is None else qref["mean_total"].get(op)
        if len(vals) < th.min_queries or not base_mean:
            continue
        cap, base_cap = 1 / max(float(np.mean(vals)), 1e-9), 1 / base_mean
        ratio = cap / base_cap
        state = _ratio_state(ratio, th.capacity_share, higher_is_worse=False)
        why = (
            f"{cap:.1f} {op}/s per worker, {ratio:.0%} of the baseline's {base_cap:.1f} "
            f"(alert under {th.capacity_share:.0%})"
        )
        out.append(Signal(f"capacity.{op}", state, cap, base_cap, why))
    return out


def build_report(
    log: QueryLog,
    *,
    collection: str,
    window: Window,
    thresholds: Thresholds | None = None,
    ref: CorpusReference | None = None,
) -> Report:
    """The report of ``window`` of ``log`` (see the module docstring)."""
    th = thresholds or Thresholds()
    ref = ref if ref is not None else log.reference()
    qref, baseline = current_query_reference(log, ref, th.reference_queries)
    events = window.events(log)
    ok = [e for e in events if not e["error"]]
    signals = latency_signals(events, qref, th)
    errors = [e for e in events if e["error"]]
    classes = sorted({e["error"] for e in errors})
    sig = rate_signal("errors", len(errors), len(events), th.error_rate, "calls")
    if classes:
        sig.why += f"; {', '.join(classes)}"
    signals.append(sig)
    empty = sum(1 for e in ok if e["hits"] == 0)
    signals.append(rate_signal("empty", empty, len(ok), th.anomaly_rate, "searches"))
    scores = dense_scores(events)
    low: list[dict[str, Any]] = []
    if ref is None or ref.threshold is None:
        signals.append(Signal("out_of_coverage", "n/a", None, None, "no corpus reference yet"))
    else:
        low = [
            e
            for e in ok
            if e["score_kind"] == "dense"
            and e["top_score"] is not None
            and e["top_score"] < ref.threshold
        ]
        sig = rate_signal(
            "out_of_coverage", len(low), int(scores.size), th.anomaly_rate, "dense searches"
        )
        sig.why += f"; best passage under {ref.threshold:.3f}"
        signals.append(sig)
    asks = [e for e in ok if e["op"] == "ask" and e["grounding"] != "abstained" and e["hits"]]
    uncited = sum(1 for e in asks if not e["citations"])
    signals.append(rate_signal("uncited", uncited, len(asks), th.anomaly_rate, "answers"))
    signals += drift_signals(log, events, ref, qref, th)
    judged = [s.state for s in signals if s.state != "n/a"]
    state = max(judged, key=_RANK.__getitem__) if judged else "n/a"
    stages = {}
    for key, stage, op in [(s, s, None) for s in LATENCY_STAGES] + [
        (f"total.{o}", "total", o) for o in OPS
    ]:
        vals = stage_values(events, stage, op)
        if vals:
            stages[key] = {
                "count": float(len(vals)),
                **{f"p{q}": float(percentile(vals, q) or 0.0) for q in (50, 95, 99)},
            }
    return Report(
        collection=collection,
        window=window.describe(),
        queries=len(events),
        state=state,
        signals=signals,
        stages=stages,
        policy=log.policy,
        dropped=int(log.meta("dropped") or 0),
        baseline=baseline,
        out_of_coverage=[
            {"ts": e["ts"], "score": e["top_score"], "query": e["query"]}
            for e in reversed(low)
            if e["query"]
        ][:20],
    )


def drift_signals(
    log: QueryLog,
    events: Sequence[dict[str, Any]],
    ref: CorpusReference | None,
    qref: dict[str, Any] | None,
    th: Thresholds,
) -> list[Signal]:
    out = []
    if ref is None:
        return [Signal("drift.topics", "n/a", None, None, "no corpus reference yet")]
    if qref is None or not qref["topics"]:
        out.append(Signal("drift.topics", "n/a", None, None, "no query reference yet"))
    else:
        out.append(
            psi_signal("drift.topics", qref["topics"], topic_counts(events, ref), th, "queries")
        )
    scores = dense_scores(events)
    if qref is None:
        out.append(Signal("drift.scores", "n/a", None, None, "no query reference yet"))
    elif not qref["score_counts"]:
        out.append(Signal("drift.scores", "n/a", None, None, "no dense scores in the reference"))
    else:
        edges = np.asarray(qref["score_edges"], dtype=np.float64)
        out.append(
            psi_signal(
                "drift.scores",
                qref["score_counts"],
                bin_counts(scores, edges),
                th,
                "dense searches",
            )
        )
    history = log.drift_history("corpus")
    if history and history[-1].get("ref_id") == ref.id:
        last = history[-1]
        value = float(last["psi"])
        state = "alert" if value > th.psi_alert else "watch" if value > th.psi_watch else "ok"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["ts"]))
        out.append(
            Signal(
                "drift.corpus",
                state,
                value,
                th.psi_alert,
                f"PSI {value:.3f} of the corpus's topics at the ingest of {when} "
                f"({last['chunks']} chunks) against the reference's ({ref.chunks})",
            )
        )
    return out
