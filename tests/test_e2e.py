"""End to end with the real embedding model: the sample corpus, the local LLM, and an
OpenAI-compatible endpoint on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.collection import open_collection
from rag.config import Settings
from tests.chat_server import ChatServer
from tests.conftest import DATA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ ingested once with the default embedding model."""
    data_dir = tmp_path_factory.mktemp("e2e") / "rag"
    with open_collection(Settings(data_dir=data_dir), create=True) as col:
        report = col.ingest([DATA])
    assert report.added == len(list(DATA.glob("*.md"))) and not report.failed
    return data_dir


def cli(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full = dict(os.environ, RAG_DATA_DIR=str(data_dir), **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "apps.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_search_finds_the_right_page(sample_data_dir: Path) -> None:
    out = json.loads(
        cli(sample_data_dir, "search", "How many dimensions do the vectors have?", "--json").stdout
    )
    assert Path(out["hits"][0]["source"]).name == "07-embeddings.md"


def test_search_finds_a_small_section_under_its_own_heading(sample_data_dir: Path) -> None:
    """The sentence about `.doc` files is its own section's chunk (not packed into the PDF
    section before it), so the question finds it and cites the right heading."""
    out = json.loads(
        cli(sample_data_dir, "search", "Can ragkit ingest .doc files?", "--json").stdout
    )
    top3 = [h for h in out["hits"][:3] if "`.doc`" in h["text"]]
    assert top3, [h["metadata"].get("heading") for h in out["hits"]]
    assert Path(top3[0]["source"]).name == "05-file-formats.md"
    assert top3[0]["metadata"]["heading"] == "Supported File Formats > Word documents"


def test_local_model_answers_from_the_passages(sample_data_dir: Path) -> None:
    out = json.loads(
        cli(
            sample_data_dir,
            "ask",
            "What is the default vector store?",
            "--json",
            "--generator",
            "local",
        ).stdout
    )
    assert out["generator"] == "local"
    assert out["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "faiss" in out["answer"].lower()  # the fact, whatever the wording
    cited = [out["sources"][n - 1] for n in out["citations"]]
    assert cited, "the answer must cite a passage (the model's own markers or ragkit's matching)"
    assert any("FAISS" in c["text"] and "default" in c["text"] for c in cited)


def test_openai_endpoint_answer_and_citations(sample_data_dir: Path) -> None:
    reply = "The default store is FAISS [2]."
    with ChatServer(reply=reply, models=["loopback-model"]) as server:
        out = json.loads(
            cli(
                sample_data_dir,
                "ask",
                "What is the default vector store?",
                "--json",
                env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"},
            ).stdout
        )
        request = server.chat_requests[-1]
    assert out["generator"] == "openai" and out["model"] == "loopback-model"
    assert out["answer"] == reply
    assert out["citations"] == [2] and out["citations_by"] == "openai"
    sent = json.dumps(request.messages)
    # The passages went to the server numbered, and [2] maps back to the second of them.
    second = out["sources"][1]["text"].split("\n")[0][:40]
    assert "Passage [2]" in sent and json.dumps(second)[1:-1] in sent
    assert request.body is not None and request.body.get("stream") is True


def test_extractive_answer_quotes_and_cites(sample_data_dir: Path) -> None:
    out = json.loads(
        cli(
            sample_data_dir,
            "ask",
            "What is the default chunk size?",
            "--json",
            "--generator",
            "extractive",
        ).stdout
    )
    assert "200 tokens" in out["answer"]
    assert out["citations"] and out["model"] == "extractive"
