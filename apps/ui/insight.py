"""The insight page: how fast this conversation's answers came, the latest results of
``rag eval`` and ``rag bench`` with their plots, when they exist, and the monitoring of the
collection in use (``rag monitor``'s signals; latency and drift PSI over time, with the 0.1
and 0.2 bands; the out-of-coverage questions when the collection logs their text).

Results are looked for in the data directory, where ``rag eval`` and ``rag bench`` write
by default (``<data dir>/eval-results/*.json``, ``<data dir>/bench/runs/*/report.md``), and
in the working directory and the repository the app runs from (``eval/results/*.json``,
``eval/runs/*/report.md`` with its PNGs, ``docs/benchmarks.md`` and other PNGs under
``docs/``).

Run as a page by ``apps/ui/app.py`` (``st.navigation``); the helpers are importable.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import streamlit as st

from apps.ui import state

_IMAGE = re.compile(r"^\s*!\[([^\]]*)\]\(([^)\s]+\.png)\)\s*$", re.IGNORECASE)
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
WINDOWS = ("1d", "1h", "7d", "all")
#: The PSI bands drawn under the drift plot: no change, watch, shift.
PSI_BANDS = ((0.0, 0.1, "no change"), (0.1, 0.2, "watch"), (0.2, None, "shift"))


def roots() -> list[Path]:
    """Folders searched for results: the working directory and the app's repository."""
    out: list[Path] = []
    for r in (Path.cwd(), state.REPO_DIR):
        r = r.resolve()
        if r not in out:
            out.append(r)
    return out


def _newest_first(paths: set[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)


def retrieval_results() -> list[tuple[Path, dict[str, Any]]]:
    """``rag eval retrieval`` results (JSON with per-mode metrics), newest first."""
    folders = [r / "eval" / "results" for r in roots()]
    # Where `rag eval` writes by default: the data directory's eval-results folder.
    folders.append(state.base_settings().data_dir / "eval-results")
    found = {p.resolve() for f in folders for p in f.glob("*.json")}
    out = []
    for path in _newest_first(found):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("modes"), dict):
            out.append((path, data))
    return out


def bench_reports() -> list[Path]:
    """Benchmark reports, newest first."""
    found: set[Path] = set()
    # Where `rag bench` writes by default: the data directory's bench/runs folder.
    runs = [state.base_settings().data_dir / "bench" / "runs"]
    for folder in runs + [r / "eval" / "runs" for r in roots()]:
        found |= {p.resolve() for p in folder.glob("*/report.md")}
    for r in roots():
        doc = r / "docs" / "benchmarks.md"
        if doc.is_file():
            found.add(doc.resolve())
    return _newest_first(found)


def loose_plots(shown: set[Path]) -> list[Path]:
    """PNGs under ``docs/`` (screenshots aside) that no report shown already includes."""
    found: set[Path] = set()
    for r in roots():
        for p in (r / "docs").rglob("*.png"):
            if "screenshots" not in p.parts:
                found.add(p.resolve())
    return sorted(found - shown)


def _inside(path: Path) -> bool:
    data = state.base_settings().data_dir.resolve()
    return path.is_relative_to(data) or any(path.is_relative_to(r) for r in roots())


def render_markdown_with_images(report: Path) -> set[Path]:
    """Show a Markdown report, its ``![..](x.png)`` lines as images and its headings two
    levels down; returns the images shown."""
    shown: set[Path] = set()
    block: list[str] = []

    def flush() -> None:
        if block:
            st.markdown("\n".join(block))
            block.clear()

    fenced = False
    for line in report.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            line = "##" + line  # the report's headings sit below the page's
        m = None if fenced else _IMAGE.match(line)
        if m:
            img = (report.parent / m.group(2)).resolve()
            if img.is_file() and _inside(img):
                flush()
                st.image(str(img), caption=m.group(1) or img.name)
                shown.add(img)
                continue
        block.append(line)
    flush()
    return shown


def _ago(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))


def _rel(path: Path) -> str:
    data = state.base_settings().data_dir.resolve()
    if path.is_relative_to(data):
        return f"<data dir>/{path.relative_to(data)}"
    for r in roots():
        if path.is_relative_to(r):
            return str(path.relative_to(r))
    return str(path)


def conversation_table(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows, question = [], ""
    for m in messages:
        if m["role"] == "user":
            question = m["content"]
        elif "answer" in m:
            a = m["answer"]
            t = a["timings"]
            rows.append(
                {
                    "question": question[:80],
                    "generator": f"{a['generator']}: {a['model']}",
                    "retrieval s": round(t.get("retrieve", 0.0), 3),
                    "first token s": round(t.get("first_token", 0.0), 3),
                    "generation s": round(t.get("generate", 0.0), 3),
                    "passages": len(a["sources"]),
                    "cited": len(a["citations"])
                    if not a["attributed"]
                    else f"{len(a['citations'])} (by ragkit)",
                }
            )
    return rows


def show_retrieval(results: list[tuple[Path, dict[str, Any]]]) -> None:
    st.header("Retrieval quality (`rag eval retrieval`)")
    if not results:
        st.caption(
            "No results yet. Run `rag eval retrieval --dataset DIR` to write "
            "`<data dir>/eval-results/retrieval-*.json`."
        )
        return
    summary = []
    for path, r in results:
        for mode, m in r["modes"].items():
            summary.append(
                {
                    "dataset": Path(str(r.get("dataset", "?"))).name,
                    "store": r.get("store"),
                    "embedder": f"{r.get('embed_model')} [{r.get('embed_backend')}]",
                    "mode": mode,
                    **{k: m.get(k) for k in METRICS},
                    "p50 ms": (m.get("latency_ms") or {}).get("p50"),
                    "p95 ms": (m.get("latency_ms") or {}).get("p95"),
                    "file": path.name,
                }
            )
    st.dataframe(summary, hide_index=True)
    path, r = results[0]
    st.subheader(f"Latest: {Path(str(r.get('dataset', '?'))).name}")
    st.caption(
        f"{r.get('documents')} documents ({r.get('chunks')} chunks), {r.get('queries')} queries; "
        f"store {r.get('store')}, {r.get('embed_model')} [{r.get('embed_backend')}] · "
        f"`{_rel(path)}`, {_ago(path)}"
    )
    chart = [
        {"mode": mode, "metric": k, "value": m.get(k)}
        for mode, m in r["modes"].items()
        for k in METRICS
        if m.get(k) is not None
    ]
    if chart:
        st.bar_chart(chart, x="metric", y="value", color="mode", stack=False)


def show_bench(reports: list[Path]) -> set[Path]:
    st.header("Vector-store benchmark (`rag bench`)")
    if not reports:
        st.caption(
            "No report yet. Run `rag bench` to write `<data dir>/bench/runs/latest/report.md` "
            "and plots."
        )
        return set()
    pick = st.selectbox(
        "Report",
        reports,
        format_func=lambda p: f"{_rel(p)} ({_ago(p)})",
        key="bench_report",
    )
    with st.container(border=True):
        return render_markdown_with_images(pick)


def monitoring_data(window: str) -> dict[str, Any] | None:
    """The collection in use's report and timeline over ``window`` (``None`` before its
    first ingest)."""
    from rag.monitoring import (
        FILE_NAME,
        Window,
        build_report,
        current_query_reference,
        open_query_log,
        timeline,
    )

    col = state.collection(state.settings_for(state.current_choice()))
    if not col.exists:
        return None
    log = col.querylog or open_query_log(col.path / FILE_NAME)
    win = Window.parse(window)
    report = build_report(log, collection=col.name, window=win)
    ref = log.reference()
    qref, _ = current_query_reference(log, ref, _thresholds().reference_queries)
    events = win.events(log)
    group = max(_thresholds().min_queries, len(events) // 40)
    return {
        "report": report,
        "events": events,
        "timeline": timeline(events, ref, qref, group=group),
        "group": group,
    }


def _thresholds() -> Any:
    from rag.monitoring import Thresholds

    return Thresholds()


def latency_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each call's total latency in ms, by time and operation (for the latency plot)."""
    return [
        {
            "time": iso_time(e["ts"]),
            "op": e["op"],
            "ms": round(e["total"] * 1e3, 3),
        }
        for e in events
        if e["total"] is not None and not e["error"]
    ]


def iso_time(ts: float) -> str:
    """A time as ISO 8601 with milliseconds, local time (Vega-Lite reads it as such)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def latency_chart(rows: list[dict[str, Any]]) -> Any:
    import altair as alt

    return (
        alt.Chart(alt.Data(values=rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title="time", axis=alt.Axis(format="%H:%M:%S")),
            y=alt.Y("ms:Q", title="latency, ms (whole call)"),
            color=alt.Color("op:N", title="call"),
        )
    )


def psi_chart(rows: list[dict[str, Any]]) -> Any:
    """PSI over time (topics and scores) over the 0-0.1, 0.1-0.2 and 0.2+ bands, on a
    symmetric-log scale: the bands stay readable next to a PSI of 5."""
    import altair as alt

    top = max([0.3] + [r["psi"] * 1.1 for r in rows])
    bands = [
        {"from": lo, "to": top if hi is None else hi, "band": name} for lo, hi, name in PSI_BANDS
    ]
    colors = alt.Scale(
        domain=[b[2] for b in PSI_BANDS], range=["#2e7d3233", "#f9a82540", "#c6282840"]
    )
    band = (
        alt.Chart(alt.Data(values=bands))
        .mark_rect()
        .encode(
            y=alt.Y(
                "from:Q",
                title="PSI (symlog scale)",
                scale=alt.Scale(type="symlog", constant=0.1, domain=[0, top]),
            ),
            y2="to:Q",
            color=alt.Color("band:N", scale=colors, title="band"),
        )
    )
    line = (
        alt.Chart(alt.Data(values=rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title="time", axis=alt.Axis(format="%H:%M:%S")),
            y=alt.Y("psi:Q"),
            strokeDash=alt.StrokeDash("signal:N", title="drift"),
        )
    )
    return alt.layer(band, line).resolve_scale(color="independent")


def show_monitoring() -> None:
    st.header("Monitoring (`rag monitor`)")
    window = st.selectbox("Window", WINDOWS, key="monitor_window")
    data = monitoring_data(window)
    if data is None:
        st.caption("Nothing to monitor yet: the collection is empty.")
        return
    report = data["report"]
    st.markdown(
        f"**{report.collection}: {report.state}** · {report.queries} queries ({report.window}) "
        f"· baseline: {report.baseline} · query logging: `{report.policy}`"
    )
    st.dataframe(
        [{"signal": s.name, "state": s.state, "why": s.why} for s in report.signals],
        hide_index=True,
    )
    rows = latency_rows(data["events"])
    st.subheader("Latency over time")
    if rows:
        st.altair_chart(latency_chart(rows), width="stretch")
    else:
        st.caption("No queries in the window yet.")
    st.subheader("Drift over time")
    psi_rows = [
        {"time": iso_time(r["ts"]), "psi": round(r[key], 4), "signal": name}
        for r in data["timeline"]
        for key, name in (("psi_topics", "topics"), ("psi_scores", "top-1 scores"))
        if r[key] is not None
    ]
    if psi_rows:
        st.altair_chart(psi_chart(psi_rows), width="stretch")
        st.caption(
            f"PSI of each run of {data['group']} queries against the query reference; "
            "under 0.1 no change, 0.1 to 0.2 watch, over 0.2 a shift."
        )
    else:
        st.caption(f"No drift yet: that needs a query reference and {data['group']} queries.")
    st.subheader("Out of coverage")
    if report.policy != "text":
        st.caption(
            "The questions are not logged (`--log-queries text` keeps them): "
            f"{report.signal('out_of_coverage').why}."
        )
    elif report.out_of_coverage:
        st.dataframe(
            [
                {"time": iso_time(q["ts"]), "score": round(q["score"], 3), "question": q["query"]}
                for q in report.out_of_coverage
            ],
            hide_index=True,
        )
    else:
        st.caption("No question in the window scored under the corpus's low-score threshold.")


def render() -> None:
    st.title("Insight")
    st.caption("How fast answers come, and how well retrieval and the stores measure up.")

    st.header("This conversation")
    rows = conversation_table(st.session_state.get("messages", []))
    if rows:
        st.dataframe(rows, hide_index=True)
    else:
        st.caption("No answers yet: each answer's retrieval and generation times appear here.")

    with state.errors_shown("reading the evaluation results"):
        show_retrieval(retrieval_results())
    shown: set[Path] = set()
    with state.errors_shown("reading the benchmark report"):
        shown = show_bench(bench_reports())
    with state.errors_shown("reading the plots under docs/"):
        plots = loose_plots(shown)
        if plots:
            st.header("Other plots")
            for p in plots:
                st.image(str(p), caption=_rel(p))
    with state.errors_shown("reading the query log"):
        show_monitoring()


if __name__ == "__main__":
    render()
