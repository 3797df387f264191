"""The Insight page's monitoring section through Streamlit's AppTest: the signals, latency
over time, drift PSI over time over the 0.1 and 0.2 bands, and the out-of-coverage
questions when the collection logs their text.

Fast: the model-free hashing embedder and the extractive generator. The screenshot in
docs/screenshots/insight-monitoring.png is made with a real Chromium by
``python -m tests.ui_screenshots_monitor``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("streamlit")

import streamlit as st
from streamlit.testing.v1 import AppTest

from apps.ui import insight, state
from rag import Settings, open_collection

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "apps" / "ui" / "app.py")
#: Queries near the sample corpus, and ones about something else entirely.
NEAR = "how are chunks cut from a Markdown file {}"
FAR = "zebra migration patterns across the serengeti plains {}"


@pytest.fixture
def ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data_dir = tmp_path / "rag"
    monkeypatch.setenv("RAG_DATA_DIR", str(data_dir))
    monkeypatch.setenv("RAG_EMBED_MODEL", "hashing-384")
    monkeypatch.setenv("RAG_EMBED_BACKEND", "hashing")
    monkeypatch.setenv("RAG_GENERATOR", "extractive")
    state.launch.cache_clear()
    st.cache_resource.clear()
    yield data_dir
    st.cache_resource.clear()


def fill(data_dir: Path, *, policy: str, near: int, far: int) -> None:
    """Ingest the sample corpus; ask ``near`` questions about it, then ``far`` about zebras."""
    s = Settings.from_env(log_queries=policy)
    with open_collection(s, create=True) as col:
        col.ingest([ROOT / "data"])
        for i in range(near):
            col.search(NEAR.format(i))
        for i in range(far):
            col.search(FAR.format(i))


def _table(arrow: bytes) -> list[dict[str, Any]]:
    import pyarrow as pa

    return pa.ipc.open_stream(arrow).read_all().to_pylist()


def charts(at: AppTest) -> dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """The page's charts by their y title: each layer's spec and its rows (inline, or in
    the Arrow data Streamlit moves a single chart's rows to)."""
    out = {}
    for c in at.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        data = {d.name: _table(d.data.data) for d in c.proto.datasets}
        if c.proto.HasField("data"):
            data[None] = _table(c.proto.data.data)
        top = spec.get("data", {}).get("name")
        parts = []
        for layer in spec.get("layer", [spec]):
            inline = layer.get("data", {})
            rows = inline["values"] if "values" in inline else data[inline.get("name", top)]
            parts.append((layer, rows))
        title = parts[0][0]["encoding"]["y"].get("title", "")
        out[title] = parts
    return out


def frame(at: AppTest, first_column: str) -> Any:
    """The page's table whose first column is ``first_column`` (``None``: no such table)."""
    found = [d.value for d in at.dataframe if list(d.value.columns)[:1] == [first_column]]
    return found[0] if found else None


def insight_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("insight.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_monitoring_plots_latency_drift_bands_and_uncovered_questions(ui: Path) -> None:
    fill(ui, policy="text", near=200, far=60)
    at = insight_page()
    at.selectbox(key="monitor_window").set_value("all").run()
    assert not at.exception
    md = "\n".join(m.value for m in at.markdown)
    assert "260 queries (all)" in md and "the first 200 queries" in md

    signals = frame(at, "signal")
    by_name = dict(zip(signals["signal"], signals["state"], strict=True))
    assert by_name["drift.topics"] == "alert" and by_name["out_of_coverage"] == "alert"

    found = charts(at)
    [(_, latency)] = found["latency, ms (whole call)"]
    assert len(latency) == 260 and {r["op"] for r in latency} == {"search"}
    (band_spec, bands), (line_spec, line) = found["PSI (symlog scale)"]
    assert band_spec["mark"]["type"] == "rect" and line_spec["mark"]["type"] == "line"
    assert [(b["from"], b["to"], b["band"]) for b in bands][:2] == [
        (0.0, 0.1, "no change"),
        (0.1, 0.2, "watch"),
    ]
    assert (bands[2]["from"], bands[2]["band"]) == (0.2, "shift")
    psi = [r["psi"] for r in line if r["signal"] == "topics"]
    assert len(psi) == 260 // 30
    assert psi[0] < 0.1 and psi[-1] > 0.2  # the zebras came last

    uncovered = frame(at, "time")
    assert len(uncovered) == 20
    assert all(q.startswith("zebra migration") for q in uncovered["question"])


def test_without_text_logging_no_question_is_shown(ui: Path) -> None:
    fill(ui, policy="none", near=40, far=10)
    at = insight_page()
    at.selectbox(key="monitor_window").set_value("all").run()
    assert frame(at, "signal") is not None and frame(at, "time") is None
    captions = "\n".join(c.value for c in at.caption)
    assert "The questions are not logged (`--log-queries text` keeps them)" in captions
    assert "No drift yet" in captions  # the first 200 queries are not in yet
    page = "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.dataframe])
    assert "zebra" not in page


def test_an_empty_collection_has_nothing_to_monitor(ui: Path) -> None:
    at = insight_page()
    assert "Nothing to monitor yet" in "\n".join(c.value for c in at.caption)
    assert insight.PSI_BANDS[1][:2] == (0.1, 0.2)


# --- in a real browser: the screenshot ----------------------------------------------------------

#: Whether the monitoring section's two charts have been drawn (Vega renders a canvas or SVG).
CHARTS_DRAWN = """(() => {
  const heads = [...document.querySelectorAll('h2')].filter(h => h.innerText.startsWith('Monitoring'));
  if (!heads.length || !document.body.innerText.includes('Drift over time')) return false;
  const drawn = document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length;
  if (drawn < 3) return false;
  heads[0].scrollIntoView();
  return true;
})()"""


@pytest.mark.slow
def test_insight_monitoring_in_a_browser(tmp_path: Path) -> None:
    """``rag ui`` in headless Chromium shows the monitoring plots; the screenshot goes to
    docs/screenshots/insight-monitoring.png with ``RAG_UI_SCREENSHOTS=1`` (as in
    tests/test_ui_browser.py)."""
    import os
    import shutil

    from tests.ui_screenshots import CHROMIUM, Chromium, run_ui, wait_for

    browser = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser tests")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client drives Chromium")
    env = {
        "RAG_EMBED_MODEL": "hashing-384",
        "RAG_EMBED_BACKEND": "hashing",
        "RAG_GENERATOR": "extractive",
    }
    data_dir = tmp_path / "rag"
    with open_collection(
        Settings(data_dir=data_dir, log_queries="text", **{
            "embed_model": env["RAG_EMBED_MODEL"], "embed_backend": env["RAG_EMBED_BACKEND"]
        }),
        create=True,
    ) as col:  # fmt: skip
        col.ingest([ROOT / "data"])
        for i in range(200):
            col.search(NEAR.format(i))
        for i in range(90):
            col.search(FAR.format(i))
    wanted = os.environ.get("RAG_UI_SCREENSHOTS")
    shots = (
        (ROOT / "docs" / "screenshots" if wanted == "1" else Path(wanted)) if wanted else tmp_path
    )
    with run_ui(data_dir, env=env, log=tmp_path / "ui.log") as url, Chromium(
        browser, width=1280, height=1700
    ) as page:  # fmt: skip
        page.navigate(f"{url}/insight")
        wait_for("the monitoring charts", lambda: page.eval(CHARTS_DRAWN), 120, interval=1.0)
        text = page.text()
        assert "default: alert" in text and "290 queries" in text
        # The out-of-coverage questions are a table (drawn on a canvas, not text).
        assert "Out of coverage" in text and "No question in the window" not in text
        assert page.eval("document.querySelectorAll('[data-testid=stDataFrame]').length") >= 2
        shot = page.screenshot(shots / "insight-monitoring.png", full_page=False)
    assert shot.stat().st_size > 10_000
