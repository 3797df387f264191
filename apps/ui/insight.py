"""The insight page: how fast this conversation's answers came, and the latest results of
``rag eval`` and ``rag bench`` with their plots, when they exist.

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


if __name__ == "__main__":
    render()
