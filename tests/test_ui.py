"""The chat UI through Streamlit's AppTest: chat, pickers, uploads, folders, insight, errors.

Fast: the model-free hashing embedder and the extractive generator (or a loopback
OpenAI-compatible server); the real model is exercised by tests/test_ui_browser.py.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("streamlit")

import streamlit as st
from streamlit.testing.v1 import AppTest

from apps.ui import state
from apps.ui.uploads import UploadError, safe_name, save_uploads, upload_dir
from tests.chat_server import ChatServer

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "apps" / "ui" / "app.py")
QUESTION = "What is the default vector store?"
SUFFIXES = [".md", ".txt", ".pdf"]


@pytest.fixture
def ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data directory, the hashing embedder, the extractive generator."""
    data_dir = tmp_path / "rag"
    monkeypatch.setenv("RAG_DATA_DIR", str(data_dir))
    monkeypatch.setenv("RAG_EMBED_MODEL", "hashing-384")
    monkeypatch.setenv("RAG_EMBED_BACKEND", "hashing")
    monkeypatch.setenv("RAG_GENERATOR", "extractive")
    for var in ("RAG_UI_MAX_UPLOAD_MB", "OPENAI_API_KEY", "OPENAI_BASE_URL", "RAG_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    state.launch.cache_clear()
    st.cache_resource.clear()
    yield data_dir
    st.cache_resource.clear()  # closes nothing, but drops the collections of this data dir


@pytest.fixture
def ingested(ui: Path) -> Path:
    from rag import Settings, open_collection

    with open_collection(Settings.from_env(), create=True) as col:
        assert col.ingest([ROOT / "data"]).total_chunks > 0
    return ui


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=120).run()


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def answers(at: AppTest) -> list[dict]:
    return [m["answer"] for m in at.session_state["messages"] if "answer" in m]


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def plain(markdown: str) -> str:
    """Markdown text as it reads, backslash escapes resolved."""
    return re.sub(r"\\(.)", r"\1", markdown)


# --- chat -------------------------------------------------------------------------------------


def test_chat_answers_with_linked_citations_keeps_history_and_starts_over(ingested: Path):
    at = app()
    no_exceptions(at)
    assert not at.chat_input[0].disabled

    at.chat_input[0].set_value(QUESTION).run()
    no_exceptions(at)
    (rec,) = answers(at)
    assert "FAISS" in rec["text"]
    assert rec["generator"] == "extractive" and rec["citations"]
    # The answer is rendered with each citation a link to its passage's anchor...
    md = texts(at.markdown)
    first = rec["citations"][0]
    assert f'<a href="#cite-{rec["id"]}-{first}">[{first}]</a>' in md
    assert f'id="cite-{rec["id"]}-{first}"' in md
    # ...one expander per retrieved passage, naming its file and marking the cited ones.
    labels = [e.label for e in at.expander]
    assert len(labels) == len(rec["sources"]) == 5
    assert all(".md" in label and "score" in label for label in labels)
    assert sum(label.endswith("· cited") for label in labels) == len(set(rec["citations"]))
    captions = texts(at.caption)
    assert "Extractive answer" in captions and "no language model" in captions
    assert "retrieval" in captions and "generation" in captions

    at.chat_input[0].set_value("Which store needs PostgreSQL?").run()
    no_exceptions(at)
    assert len(at.session_state["messages"]) == 4
    assert len(answers(at)) == 2
    assert len(at.chat_message) == 4  # the history stays on the page

    new_chat = next(b for b in at.sidebar.button if b.label == "New chat")
    new_chat.click().run()
    no_exceptions(at)
    assert at.session_state["messages"] == []
    assert len(at.chat_message) == 0


def test_answers_show_the_query_grounding_and_route(ingested: Path):
    """Under each answer: the query searched, what the grounding check did, and with a
    routes file in the data directory the route taken and why (the sidebar says that the
    routes choose the generator, instead of offering a picker they would override)."""
    (ingested / "routes.toml").write_text(
        'default = "quotes"\n'
        '[generators.quotes]\nkind = "extractive"\n'
        '[generators.brief]\nkind = "extractive"\n'
        '[[rules]]\nmax_words = 4\ngenerator = "brief"\n'
    )
    at = app()
    no_exceptions(at)
    assert "Generator" not in [s.label for s in at.sidebar.selectbox]
    assert "routes.toml" in plain(texts(at.sidebar.caption))

    at.chat_input[0].set_value(QUESTION).run()
    no_exceptions(at)
    (rec,) = answers(at)
    assert rec["route"] == "quotes" and "default" in rec["route_reason"]
    assert rec["grounding"] in ("grounded", "fell back")
    captions = plain(texts(at.caption))
    assert f"Searched for: “{QUESTION}”" in captions
    assert "Route quotes" in captions.replace("*", "")
    assert ("Grounded:" if rec["grounding"] == "grounded" else "Fell back:") in captions

    at.chat_input[0].set_value("Default vector store?").run()
    no_exceptions(at)
    assert answers(at)[1]["route"] == "brief"
    assert "max_words" in answers(at)[1]["route_reason"]


def test_pickers_decide_mode_k_mmr_and_store(ingested: Path):
    at = app()
    at.sidebar.radio(key="mode").set_value("bm25")
    at.sidebar.slider(key="k").set_value(3)
    at.sidebar.checkbox(key="mmr").check()
    at.run()
    at.chat_input[0].set_value(QUESTION).run()
    no_exceptions(at)
    (rec,) = answers(at)
    assert rec["settings"]["mode"] == "bm25" and rec["settings"]["k"] == 3
    assert rec["settings"]["mmr"] is True
    assert len(rec["sources"]) == 3 and len(at.expander) == 3
    assert "bm25, k=3, MMR" in texts(at.caption)

    # Every registered backend is offered; another store holds no collection yet.
    stores = at.sidebar.selectbox(key="store")
    assert {"faiss", "chroma", "qdrant", "pgvector"} <= set(stores.options)
    stores.set_value("chroma").run()
    no_exceptions(at)
    choice = at.session_state["choice"]
    assert state.settings_for(choice).store == "chroma"
    assert at.chat_input[0].disabled
    assert "has no documents yet" in texts(at.info)


def test_generator_picker_uses_the_endpoint_and_never_sends_the_key_elsewhere(
    ingested: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.setenv("RAG_UI_ALLOW_ANY_ENDPOINT", "1")  # the operator allows typed URLs
    with ChatServer(reply="FAISS is the default store [1].") as server:
        at = app()
        at.sidebar.selectbox(key="generator").set_value("openai").run()
        # The endpoint and model can be named; the key cannot be typed anywhere.
        labels = [t.label for t in at.sidebar.text_input]
        assert labels == ["Endpoint base URL", "Model"]
        assert not any("key" in t.label.lower() for t in at.text_input)
        at.sidebar.text_input(key="base_url").set_value(server.base_url)
        at.sidebar.text_input(key="llm_model").set_value("test-model")
        at.run()
        assert "none sent" in texts(at.sidebar.caption)
        at.chat_input[0].set_value(QUESTION).run()
        no_exceptions(at)
        (rec,) = answers(at)
        assert (rec["generator"], rec["model"]) == ("openai", "test-model")
        assert rec["text"] == "FAISS is the default store [1]." and rec["citations"] == [1]
        assert server.base_url in plain(texts(at.caption))
        (request,) = server.chat_requests
        # A URL typed into the page does not get the server's key.
        assert "sk-from-the-environment" not in request.headers.get("authorization", "")

    # The endpoint configured in the environment does.
    with ChatServer(reply="FAISS [2].") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        at = app()
        at.sidebar.selectbox(key="generator").set_value("openai").run()
        assert "from the server's environment" in texts(at.sidebar.caption)
        at.chat_input[0].set_value(QUESTION).run()
        no_exceptions(at)
        (request,) = server.chat_requests
        assert request.headers.get("authorization") == "Bearer sk-from-the-environment"


def test_key_goes_to_says_what_the_openai_generator_does(monkeypatch: pytest.MonkeyPatch):
    """The sidebar's caption and the generator it builds agree on where the key goes."""
    from rag import Settings
    from rag.generation import load_generator

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    settings = Settings(generator="openai", llm_model="test-model")
    with ChatServer(reply="ok [1].") as configured, ChatServer(reply="ok [1].") as other:
        monkeypatch.setenv("OPENAI_BASE_URL", configured.base_url)
        for typed, server in [
            (None, configured),
            (configured.base_url, configured),
            (configured.base_url + "/", configured),
            (other.base_url, other),
        ]:
            gen = load_generator(settings, base_url=typed)
            assert "".join(gen.chat([{"role": "user", "content": "hi"}])) == "ok [1]."
            sent = server.chat_requests[-1].headers.get("authorization", "")
            assert state.key_goes_to(typed) == ("sk-from-the-environment" in sent), typed
        assert not state.key_goes_to(other.base_url)
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert state.key_goes_to(None) and state.key_goes_to("https://api.openai.com/v1/")
    assert not state.key_goes_to("http://127.0.0.1:8080/v1")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert not state.key_goes_to(None)


def test_generators_are_loaded_once_and_rebuilt_when_their_settings_change(ingested: Path):
    settings = state.settings_for(state.Choice("default", "faiss", generator="extractive"))
    col = state.collection(settings)
    gen = state.generator(settings, col, None)
    assert gen.name == "extractive"
    # Retrieval settings are not the generator's: the loaded one is reused.
    assert state.generator(settings.with_(k=2, mode="bm25"), col, "") is gen
    assert state.generator(settings.with_(max_tokens=99), col, None) is not gen


def echo_generator(ctx: Any) -> Any:
    """A third-party generator plugin (``ragkit.generators`` entry point) for the picker."""

    class Echo:
        name = "echo"
        model = "echo-1"

        def stream(self, question: str, sources: Any, *, history: Any = ()) -> Iterator[str]:
            yield f"You asked: {question} [1]"

        def rewrite_question(self, question: str, history: Any) -> str:
            return question

    return Echo()


def test_generator_picker_offers_every_generator_plugin(
    ingested: Path, monkeypatch: pytest.MonkeyPatch
):
    import importlib.metadata as md

    from rag import plugins

    installed = [ep for group in plugins.GROUPS.values() for ep in md.entry_points(group=group)]
    echo = md.EntryPoint("echo", f"{__name__}:echo_generator", "ragkit.generators")
    monkeypatch.setattr(plugins, "_REGISTRY", plugins.Registry(md.EntryPoints([*installed, echo])))
    at = app()
    picker = at.sidebar.selectbox(key="generator")
    assert picker.options == [
        "auto (local)",
        "echo",  # a plugin's generator shows its name
        "extractive (no LLM)",
        "local model (in process)",
        "OpenAI-compatible endpoint",
    ]
    picker.set_value("echo").run()
    at.chat_input[0].set_value(QUESTION).run()
    no_exceptions(at)
    (rec,) = answers(at)
    assert (rec["generator"], rec["model"]) == ("echo", "echo-1")
    assert rec["text"] == f"You asked: {QUESTION} [1]" and rec["citations"] == [1]


def test_errors_are_messages_not_tracebacks(ingested: Path, monkeypatch: pytest.MonkeyPatch):
    # The collection was built with hashing-384; opening it with another model is an error
    # that says what to do.
    monkeypatch.setenv("RAG_EMBED_MODEL", "hashing-256")
    at = app()
    no_exceptions(at)
    assert "was built with the embedding model hashing-384" in texts(at.error)
    assert at.chat_input[0].disabled


def test_an_unreachable_endpoint_is_a_message(ingested: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAG_UI_ENDPOINTS", "http://127.0.0.1:9/v1")
    at = app()
    at.sidebar.selectbox(key="generator").set_value("openai").run()
    at.sidebar.selectbox(key="endpoint").set_value("http://127.0.0.1:9/v1")
    at.sidebar.text_input(key="llm_model").set_value("m")
    at.run()
    at.chat_input[0].set_value(QUESTION).run()
    no_exceptions(at)
    assert at.error, "the failure is shown"
    assert answers(at) == []
    assert "error" in at.session_state["messages"][-1]


def page_dump(at: AppTest) -> str:
    """Everything the app sent to the browser: every element as its protobuf text, and
    every widget's current value."""
    out: list[str] = []

    def walk(node: Any) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        if not hasattr(node, "children"):
            with contextlib.suppress(Exception):  # elements without a value
                out.append(str(node.value))
        for child in (getattr(node, "children", None) or {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


def test_the_endpoint_is_the_servers_choice_not_the_pages(
    ingested: Path, monkeypatch: pytest.MonkeyPatch
):
    """Without RAG_UI_ALLOW_ANY_ENDPOINT, no URL from the page is ever requested: the
    endpoint is the server's (OPENAI_BASE_URL) or one RAG_UI_ENDPOINTS lists."""
    from rag.errors import ConfigError

    with (
        ChatServer(reply="FAISS [1].") as configured,
        ChatServer(reply="FAISS, listed [1].") as listed,
        ChatServer(reply="Whatever you want [1].") as other,
    ):
        monkeypatch.setenv("OPENAI_BASE_URL", configured.base_url)
        at = app()
        at.sidebar.selectbox(key="generator").set_value("openai").run()
        # A URL typed into the page (what the endpoint field held) is not requested.
        at.session_state["base_url"] = other.base_url
        at.sidebar.text_input(key="llm_model").set_value("test-model").run()
        at.chat_input[0].set_value(QUESTION).run()
        no_exceptions(at)
        assert other.requests == []
        assert len(configured.chat_requests) == 1
        assert [t.label for t in at.sidebar.text_input] == ["Model"]  # no field for a URL
        assert configured.base_url in plain(texts(at.caption))

        # Nor by any other way into the generator: refused before any request.
        choice = at.session_state["choice"]
        settings = state.settings_for(choice)
        with pytest.raises(ConfigError, match="RAG_UI_ENDPOINTS"):
            state.generator(settings, state.collection(settings), other.base_url)
        assert other.requests == []

        # The operator's list is a picker.
        monkeypatch.setenv("RAG_UI_ENDPOINTS", f" {listed.base_url} ,, {configured.base_url}/")
        at = app()
        at.sidebar.selectbox(key="generator").set_value("openai").run()
        picker = at.sidebar.selectbox(key="endpoint")
        assert picker.options == [f"{configured.base_url} (the server's)", listed.base_url]
        picker.set_value(listed.base_url)
        at.sidebar.text_input(key="llm_model").set_value("test-model")
        at.run()
        at.chat_input[0].set_value(QUESTION).run()
        no_exceptions(at)
        assert len(listed.chat_requests) == 1 and other.requests == []

        # Free entry only when the operator turns it on.
        monkeypatch.setenv("RAG_UI_ALLOW_ANY_ENDPOINT", "1")
        at = app()
        at.sidebar.selectbox(key="generator").set_value("openai").run()
        at.sidebar.text_input(key="base_url").set_value(other.base_url)
        at.sidebar.text_input(key="llm_model").set_value("test-model")
        at.run()
        at.chat_input[0].set_value(QUESTION).run()
        no_exceptions(at)
        assert len(other.chat_requests) == 1


def test_endpoint_credentials_are_never_on_the_page(
    ingested: Path, monkeypatch: pytest.MonkeyPatch
):
    with ChatServer(reply="FAISS is the default store [1].") as server:
        secret = f"http://user:s3cret-pass@127.0.0.1:{server.port}/v1"
        monkeypatch.setenv("OPENAI_BASE_URL", secret)
        monkeypatch.setenv("RAG_UI_ENDPOINTS", secret + "?key=s3cret-key")
        for allow_any in ("", "1"):
            monkeypatch.setenv("RAG_UI_ALLOW_ANY_ENDPOINT", allow_any)
            at = app()
            at.sidebar.selectbox(key="generator").set_value("openai").run()
            at.sidebar.text_input(key="llm_model").set_value("test-model").run()
            at.chat_input[0].set_value(QUESTION).run()
            no_exceptions(at)
            (rec,) = answers(at)
            assert rec["text"] == "FAISS is the default store [1]."
            assert f"(http://***@127.0.0.1:{server.port}/v1)" in plain(texts(at.caption))
            assert "s3cret" not in page_dump(at), allow_any
        # An error names the endpoint without its credentials, too.
        monkeypatch.setenv("RAG_LLM_MODEL", "nope")
        at = app()
        at.sidebar.selectbox(key="generator").set_value("openai").run()
        at.chat_input[0].set_value(QUESTION).run()
        assert "not found at http://***@127" in plain(texts(at.error))
        assert "s3cret" not in page_dump(at)


def test_endpoint_error_bodies_are_not_shown(ingested: Path, monkeypatch: pytest.MonkeyPatch):
    page = "<html><body>" + "intranet payroll ![x](http://127.0.0.1:9/beacon.png) " * 50
    with (
        ChatServer(fail=(500, "text/html", page)) as html,
        ChatServer(
            fail=(
                400,
                "application/json",
                '{"error": {"message": "bad ![x](http://127.0.0.1:9/b.png)"}}',
            )
        ) as api,
    ):
        for server in (html, api):
            monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
            at = app()
            at.sidebar.selectbox(key="generator").set_value("openai").run()
            at.sidebar.text_input(key="llm_model").set_value("test-model").run()
            at.chat_input[0].set_value(QUESTION).run()
            no_exceptions(at)
            error = texts(at.error)
            assert f"answered {server.fail[0]}" in error  # type: ignore[index]
            assert "payroll" not in error and "![" not in error, error


# --- ingestion --------------------------------------------------------------------------------


def ingest_page() -> AppTest:
    at = app()
    at.switch_page("ingest.py").run()
    no_exceptions(at)
    return at


def test_upload_saves_inside_the_data_dir_refuses_bad_names_and_ingests(ui: Path):
    at = ingest_page()
    assert "is empty" in texts(at.info)
    uploader = at.file_uploader[0]
    assert ".md" in {f".{t.lstrip('.')}" for t in uploader.allowed_type}
    uploader.set_value(
        [
            ("notes.md", b"# Notes\n\nThe pelican guards the harbour.\n", "text/markdown"),
            ("../../escape.md", b"# Escape\n\nNot here.\n", "text/markdown"),
            (".hidden.md", b"# Hidden\n", "text/markdown"),
            ("tool.exe", b"MZ", "application/octet-stream"),
        ]
    ).run()  # uploading reruns the page, which enables the button
    at.button(key="ingest_up").click().run()
    no_exceptions(at)

    folder = ui / "uploads" / "default"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.md"]
    assert not (ui.parent / "escape.md").exists() and not (ui / "escape.md").exists()
    assert "Ingested 1 uploaded file(s) into **default**" in texts(at.success)
    refused = at.session_state["upload_refused"]
    assert [name for name, _ in refused] == ["../../escape.md", ".hidden.md", "tool.exe"]
    assert "must not contain '..'" in refused[0][1] and "hidden" in refused[1][1]
    assert "unsupported file type .exe" in refused[2][1]
    assert texts(at.error).startswith("3 upload(s) refused")
    # The stats show the new collection, and the chat can use it.
    assert [m.value for m in at.metric][:2] == ["1", "1"]
    at.switch_page("chat.py").run()
    assert not at.chat_input[0].disabled


def test_oversized_upload_is_refused_before_writing(ui: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAG_UI_MAX_UPLOAD_MB", "0.001")  # about 1 KB
    at = ingest_page()
    at.file_uploader[0].set_value(("big.md", b"# Big\n\n" + b"word " * 1000, "text/markdown")).run()
    at.button(key="ingest_up").click().run()
    no_exceptions(at)
    assert "over the upload limit" in json.dumps(at.session_state["upload_refused"])
    assert not (ui / "uploads" / "default" / "big.md").exists()
    assert not at.success


def test_folder_ingest_reports_failures_and_a_missing_folder(ui: Path, tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Good\n\nHerons fish at dawn.\n")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a real PDF")
    at = ingest_page()

    at.text_input(key="folder").set_value(str(tmp_path / "nowhere")).run()
    at.button(key="ingest_folder").click().run()
    no_exceptions(at)
    assert "does not exist on the server" in texts(at.error)

    at.text_input(key="folder").set_value(str(docs)).run()
    at.button(key="ingest_folder").click().run()
    no_exceptions(at)
    warning = texts(at.warning)
    assert "1 file(s) failed" in warning and "1 added" in warning
    (table,) = at.table
    rows = table.value.to_dict("records")
    assert len(rows) == 1 and rows[0]["file"].endswith("broken.pdf") and rows[0]["reason"]


# --- insight ----------------------------------------------------------------------------------


def _stand_in_plot(dest: Path) -> None:
    """A PNG (Streamlit's icon) where a report expects a plot."""
    png = Path(st.__file__).parent / "static" / "favicon.png"
    if not png.exists():
        pytest.skip("no PNG to stand in for a plot")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(png.read_bytes())


def test_insight_shows_eval_results_and_bench_reports(
    ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    work = tmp_path / "work"
    (work / "eval" / "results").mkdir(parents=True)
    result = {
        "dataset": "/x/scifact", "store": "faiss", "embed_model": "m", "embed_backend": "torch",
        "documents": 10, "chunks": 12, "queries": 3,
        "modes": {
            mode: {"ndcg@10": 0.6, "recall@10": 0.7, "recall@100": 0.9, "mrr@10": 0.5,
                   "latency_ms": {"p50": 1.0, "p95": 2.0}}
            for mode in ("dense", "bm25")
        },
    }  # fmt: skip
    (work / "eval" / "results" / "retrieval-scifact-faiss-torch.json").write_text(
        json.dumps(result)
    )
    run = work / "eval" / "runs" / "r1"
    _stand_in_plot(run / "plot.png")
    (run / "report.md").write_text("# Vector-store benchmark\n\nA table.\n\n![Recall](plot.png)\n")
    monkeypatch.chdir(work)

    at = app()
    at.chat_input[0].set_value(QUESTION).run()
    at.switch_page("insight.py").run()
    no_exceptions(at)
    frames = [f.value for f in at.dataframe]
    conversation, evals = frames[0], frames[1]
    assert conversation.iloc[0]["question"] == QUESTION
    assert conversation.iloc[0]["generator"] == "extractive: extractive"
    # The repository's own results are listed too; this test's are the rows scoring 0.6.
    mine = evals[evals["ndcg@10"] == 0.6]
    assert set(mine["mode"]) == {"dense", "bm25"} and len(mine) == 2
    assert "### Vector-store benchmark" in texts(at.markdown)
    assert "Recall" in [c for img in at.image for c in img.captions]


def test_insight_finds_the_bench_report_in_the_data_dir(
    ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Where `rag bench` writes by default, however far from the working directory.
    run = ingested / "bench" / "runs" / "latest"
    _stand_in_plot(run / "plot.png")
    (run / "report.md").write_text("# Bench in the data dir\n\n![Latency](plot.png)\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    at = app()
    at.switch_page("insight.py").run()
    no_exceptions(at)
    assert at.selectbox(key="bench_report").value == (run / "report.md").resolve()
    assert "### Bench in the data dir" in texts(at.markdown)
    assert "Latency" in [c for img in at.image for c in img.captions]


# --- the upload rules, directly ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../x.md", "a/../../x.md", "..\\..\\x.md", "..", ".", "", ".env.md", "x\x00.md",
     "dir/.hidden.md", "x.exe", "x", "x.md/"],
)  # fmt: skip
def test_unsafe_names_are_refused(name: str):
    with pytest.raises(UploadError):
        safe_name(name, SUFFIXES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.md", "report.md"),
        ("C:\\Users\\me\\report.MD", "report.md"),
        ("dir/sub/notes.txt", "notes.txt"),
        ("we ird<>|name?.md", "we ird_name.md"),
        ("été.md", "été.md"),
        ("a" * 300 + ".pdf", "a" * 116 + ".pdf"),
    ],
)
def test_names_are_cleaned(name: str, expected: str):
    assert safe_name(name, SUFFIXES) == expected


@dataclass
class FakeUpload:
    name: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def getvalue(self) -> bytes:
        return self.data


def test_collisions_get_unique_names_and_identical_files_are_not_duplicated(tmp_path: Path):
    folder = upload_dir(tmp_path, "docs")
    first = save_uploads([FakeUpload("a.md", b"one")], folder, max_bytes=100, suffixes=SUFFIXES)
    same = save_uploads([FakeUpload("a.md", b"one")], folder, max_bytes=100, suffixes=SUFFIXES)
    other = save_uploads([FakeUpload("a.md", b"two")], folder, max_bytes=100, suffixes=SUFFIXES)
    assert first.saved == same.saved == [folder / "a.md"]
    assert other.saved == [folder / "a-1.md"]
    assert (folder / "a-1.md").read_bytes() == b"two"
    too_big = save_uploads(
        [FakeUpload("b.md", b"x" * 101)], folder, max_bytes=100, suffixes=SUFFIXES
    )
    assert not too_big.saved and "over the upload limit" in too_big.refused[0][1]
    assert sorted(p.name for p in folder.iterdir()) == ["a-1.md", "a.md"]
    with pytest.raises(UploadError):
        upload_dir(tmp_path, "../etc")


# --- rag ui -----------------------------------------------------------------------------------


def test_ui_command_runs_streamlit_headless_on_loopback(tmp_path: Path):
    """``rag ui``'s options reach the app: its ``streamlit run`` command line, as the app
    parses it."""
    from apps.cli.ui import build_command, command
    from rag.errors import ConfigError

    parser = argparse.ArgumentParser(prog="rag ui")
    command.configure(parser)
    args = parser.parse_args(
        ["--data-dir", str(tmp_path), "--collection", "notes", "--store", "qdrant",
         "--store-url", "http://127.0.0.1:6333", "--store-opt", "on_disk=true",
         "--max-upload-mb", "2.5"]
    )  # fmt: skip
    assert args.port == 8501 and args.host == "127.0.0.1"
    cmd = build_command(args)
    flags = dict(itertools.pairwise(cmd))
    assert cmd[1:5] == ["-m", "streamlit", "run", APP] and Path(APP).is_file()
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8501"
    assert flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert flags["--server.maxUploadSize"] == "3"
    script_args = cmd[cmd.index("--") + 1 :]
    assert state.parse_launch_args(script_args) == state.LaunchOptions(
        data_dir=str(tmp_path.absolute()),
        collection="notes",
        store="qdrant",
        store_url="http://127.0.0.1:6333",
        store_options=(("on_disk", "true"),),
        max_upload_mb=2.5,
    )

    with pytest.raises(ConfigError):
        build_command(parser.parse_args(["--max-upload-mb", "0"]))
    with pytest.raises(ConfigError):
        build_command(parser.parse_args(["--port", "70000"]))


# --- rendering helpers ------------------------------------------------------------------------


def test_answers_and_passages_are_text_with_the_apps_own_links():
    from apps.ui.chat import answer_html, passage_html, text_html
    from apps.ui.state import md_text

    beacon = "![x](http://evil/b.png) <img src=http://evil/i.png> $0"
    html = answer_html(f"FAISS [1, 2] {beacon} [9]\n\nNext paragraph", 3, "a1")
    assert html.startswith(
        '<div class="rk-text">FAISS <a href="#cite-a1-1">[1]</a><a href="#cite-a1-2">[2]</a> '
    )
    # Out of range: left as text. No tag but the app's own, no line break that would end
    # the raw HTML block (Markdown would read what follows a blank line).
    assert "&lt;img src=http://evil/i.png&gt; $0 [9]&#10;&#10;Next paragraph</div>" in html
    assert "\n" not in html and html.count("<") == 6  # div, a, /a, a, /a, /div
    passage = passage_html("## Setup\r\n\r\nRun it.</div><script>x</script>\x1b[31m", "cite-a1-2")
    assert passage == (
        '<div id="cite-a1-2" class="rk-text rk-passage">## Setup&#10;&#10;Run it.&lt;/div&gt;'
        "&lt;script&gt;x&lt;/script&gt;[31m</div>"
    )
    assert text_html("a <b>\nc") == '<div class="rk-text">a &lt;b&gt;&#10;c</div>'
    # Labels, captions and messages: every markup character escaped, on one line.
    assert md_text("**[1]** ![x](http://e/b.png)\n:red[x] `c` <i>") == (
        "\\*\\*\\[1\\]\\*\\* \\!\\[x\\]\\(http\\://e/b.png\\) \\:red\\[x\\] \\`c\\` \\<i\\>"
    )


def test_tokens_are_painted_as_they_stream(monkeypatch: pytest.MonkeyPatch):
    from apps.ui import chat

    painted: list[str] = []

    class Placeholder:
        def markdown(self, text: str, *, unsafe_allow_html: bool = False) -> None:
            painted.append(text)

    monkeypatch.setattr(chat, "_REPAINT", 0.0)
    streamer = chat._Streamer(Placeholder())
    for token in ["FAISS", " is", " ![x](http://evil/b.png)"]:
        streamer(token)
    assert painted == [
        chat.text_html("FAISS ▌"),
        chat.text_html("FAISS is ▌"),
        '<div class="rk-text">FAISS is ![x](http://evil/b.png) ▌</div>',
    ]
