"""The ingest page's web address and git repository choices, through Streamlit's AppTest.

The git tab ingests a repository the test creates; the web tab is checked against a
stand-in web source (what it is given, and what it returns, land in the collection), so no
page is fetched from anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

pytest.importorskip("streamlit")

import streamlit as st

from apps.ui import ingest as ingest_page_module
from apps.ui import state
from rag import plugins
from rag.errors import MissingDependencyError
from rag.source import SourceItem, SourceOptions
from rag.types import Document
from tests.test_git_source import ALPHA, BETA, Repo
from tests.test_ui import ingest_page, no_exceptions, plain, texts


@pytest.fixture
def ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data directory and the hashing embedder (as tests/test_ui.py sets them)."""
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
    st.cache_resource.clear()


def sources_in(data_dir: Path) -> list[str]:
    from rag import Settings, open_collection

    with open_collection(Settings.from_env()) as col:
        return sorted(r.source for r in col.records.all())


def test_git_tab_ingests_the_files_tracked_at_a_ref(ui: Path, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.write("alpha.md", ALPHA)
    repo.commit("first")
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("beta.md", BETA)
    repo.commit("feature")
    repo.git("checkout", "-q", "main")
    at = ingest_page()

    at.text_input(key="git_repo").set_value(str(repo.path)).run()
    at.text_input(key="git_ref").set_value("feature").run()
    at.button(key="ingest_git").click().run()
    no_exceptions(at)
    target = f"git+{repo.path}@feature"
    assert f"Ingested {target} into **default**" in plain(texts(at.success))
    base = f"git+{repo.path.resolve()}@feature:"
    assert sources_in(ui) == [base + "alpha.md", base + "beta.md"]

    # A ref that is not there: the failure and its reason, nothing removed.
    at.text_input(key="git_ref").set_value("nope").run()
    at.button(key="ingest_git").click().run()
    no_exceptions(at)
    assert "1 file(s) failed" in texts(at.warning)
    rows = at.table[-1].value.to_dict("records")
    assert "no branch, tag or commit named 'nope'" in plain(rows[0]["reason"])
    assert sources_in(ui) == [base + "alpha.md", base + "beta.md"]

    # Not a repository: a message, not a traceback.
    at.text_input(key="git_repo").set_value(str(tmp_path)).run()
    at.text_input(key="git_ref").set_value("").run()
    at.button(key="ingest_git").click().run()
    no_exceptions(at)
    assert "is not a git repository" in plain(texts(at.error))


class StandInWeb:
    """Takes the place of the web source: declares two options, records what it was given,
    and returns one page."""

    name: ClassVar[str] = "web"
    description: ClassVar[str] = "a stand-in for the web source"
    options: ClassVar[dict[str, str]] = {
        "depth": "links to follow from each start page",
        "max_pages": "pages to fetch at most",
    }
    given: ClassVar[list[SourceOptions]] = []

    def __init__(self, options: SourceOptions) -> None:
        StandInWeb.given.append(options)
        self.options = options

    def scan(self) -> Iterator[SourceItem]:
        for url in self.options.targets:
            yield SourceItem(url, 1, 1.0)

    def load(self, item: SourceItem) -> list[Document]:
        text = "# Shorebirds\n\nKnots gather on the estuary in their thousands."
        return [Document(item.id, text, {"source": item.id, "title": "Shorebirds"}, "markdown")]

    def covers(self, source_id: str) -> bool:
        return source_id in self.options.targets

    def locate(self, source_id: str) -> SourceItem | None:
        return None


def _with_web(monkeypatch: pytest.MonkeyPatch, web: object) -> None:
    original = plugins.load

    def load(group: str, name: str) -> object:
        if (group, name) == ("sources", "web"):
            if isinstance(web, Exception):
                raise web
            return web
        return original(group, name)

    monkeypatch.setattr(plugins, "load", load)


def test_web_tab_passes_the_address_and_the_options_given(
    ui: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_web(monkeypatch, StandInWeb)
    StandInWeb.given.clear()
    at = ingest_page()
    # One input per option the source declares, labelled from its name, its help beside it.
    assert at.text_input(key="web_opt_depth").label == "Depth"
    assert at.text_input(key="web_opt_max_pages").help == "pages to fetch at most"

    at.text_input(key="web_url").set_value("ftp://example.org/").run()
    at.button(key="ingest_web").click().run()
    no_exceptions(at)
    assert "is not a web address" in plain(texts(at.error)) and StandInWeb.given == []

    url = "https://birds.example.org/shore"
    at.text_input(key="web_url").set_value(url).run()
    at.text_input(key="web_opt_depth").set_value("2").run()
    at.button(key="ingest_web").click().run()
    no_exceptions(at)
    (given,) = StandInWeb.given
    assert given.targets == (url,)
    assert given.params == (("depth", "2"),)  # an option left empty is not passed
    assert f"Ingested {url} into **default**" in plain(texts(at.success))
    assert sources_in(ui) == [url]


def test_web_tab_says_why_the_web_source_cannot_be_used(
    ui: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_web(monkeypatch, MissingDependencyError("the web source", "trafilatura", "web"))
    at = ingest_page()
    assert "pip install 'ragkit[web]'" in plain(texts(at.warning))
    assert not [b for b in at.button if b.key == "ingest_web"]


@pytest.mark.parametrize(
    ("repo", "ref", "target"),
    [
        ("/srv/repo", "", "git+/srv/repo"),
        (" /srv/repo ", "v1", "git+/srv/repo@v1"),
        ("git+https://host/o/r.git", "main", "git+https://host/o/r.git@main"),
    ],
)
def test_git_target(repo: str, ref: str, target: str) -> None:
    assert ingest_page_module.git_target(repo, ref) == target
