"""Follow-up questions in a conversation are made standalone before retrieval, whatever the
generator (rag.generation.rewrite, Collection.ask(history=...))."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from eval.multiturn import load
from rag.collection import Collection, open_collection
from rag.config import Settings
from rag.generation import load_generator
from rag.generation.rewrite import (
    is_follow_up,
    join_rewrite,
    merge_rewrite,
    plausible_rewrite,
    standalone,
)
from rag.types import Hit

from .conftest import DATA

CHUNK_SIZE = [("What is the default chunk size?", "The default chunk size is 200 tokens [1].")]


class FakeGenerator:
    """A generator whose rewrite is fixed, recording the questions it was asked to rewrite."""

    name = "fake"
    model = "fake"

    def __init__(self, rewrite: str) -> None:
        self.rewrite = rewrite
        self.asked: list[str] = []

    def stream(
        self, question: str, sources: Sequence[Hit], *, history: Sequence[tuple[str, str]] = ()
    ) -> Iterator[str]:
        yield "An answer [1]."

    def rewrite_question(self, question: str, history: Sequence[tuple[str, str]]) -> str:
        self.asked.append(question)
        return self.rewrite


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("followups"),
        embed_model="hashing-384",
        embed_backend="hashing",
    )
    with open_collection(settings, create=True) as c:
        c.ingest([DATA])
        yield c


def _finds_the_option(hits: Sequence[Hit]) -> bool:
    """Whether the passage that answers "how do I change the chunk size?" is among ``hits``."""
    return any(
        Path(h.chunk.source).name == "06-chunking.md" and "--chunk-size" in h.chunk.text
        for h in hits
    )


def test_extractive_follow_up_is_rewritten_and_retrieves_the_right_passage(
    col: Collection,
) -> None:
    assert not _finds_the_option(col.search("and how do I change it?", k=5))  # alone: lost
    gen = load_generator(col.settings.with_(generator="extractive"), embed=col.embedder.embed)
    result = col.ask("and how do I change it?", k=5, history=CHUNK_SIZE, generator=gen)
    assert "chunk size" in result.query.lower()
    assert "change it" in result.query
    assert _finds_the_option(result.sources)


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "and how do I change it?",  # no rewrite happened
        "I'm sorry, I cannot rewrite this question.",
        "The default chunk size is 200 tokens.",  # the last answer, copied
        "Standalone question: how do I change it?",
        "How do I change the weather in Paris tomorrow morning?",  # lost the subject
        "What is the default chunk size? " * 20,  # far too long
    ],
)
def test_a_junk_rewrite_falls_back_to_the_previous_question(col: Collection, junk: str) -> None:
    gen = FakeGenerator(junk)
    query, how = standalone("and how do I change it?", CHUNK_SIZE, gen)
    assert how in ("join", "merge")
    assert query in (
        join_rewrite("and how do I change it?", CHUNK_SIZE[0][0]),
        merge_rewrite("and how do I change it?", CHUNK_SIZE[0][0]),
    )
    result = col.ask("and how do I change it?", k=5, history=CHUNK_SIZE, generator=gen)
    assert gen.asked == ["and how do I change it?", "and how do I change it?"]
    assert result.query == query
    assert _finds_the_option(result.sources)


def test_a_sound_llm_rewrite_is_kept(col: Collection) -> None:
    gen = FakeGenerator("How do I change the default chunk size?")
    assert standalone("and how do I change it?", CHUNK_SIZE, gen) == (
        "How do I change the default chunk size?",
        "llm",
    )
    result = col.ask("and how do I change it?", history=CHUNK_SIZE, generator=gen)
    assert result.query == "How do I change the default chunk size?"


def test_a_generator_whose_rewrite_fails_falls_back() -> None:
    class Failing(FakeGenerator):
        def rewrite_question(self, question: str, history: Sequence[tuple[str, str]]) -> str:
            raise RuntimeError("model crashed")

    query, how = standalone("and how do I change it?", CHUNK_SIZE, Failing(""))
    assert how in ("join", "merge")
    assert "chunk" in query and "change it" in query


def test_a_standalone_question_is_untouched(col: Collection) -> None:
    gen = FakeGenerator("Something else entirely about chunk sizes?")
    question = "Which vector store backends does ragkit support?"
    assert standalone(question, CHUNK_SIZE, gen) == (question, "standalone")
    assert standalone("and how do I change it?", [], gen) == (
        "and how do I change it?",
        "standalone",
    )
    assert gen.asked == []
    result = col.ask(question, history=CHUNK_SIZE, generator=gen)
    assert result.query == question
    assert gen.asked == []  # no LLM call (seconds with a local model) for a standalone one


@pytest.mark.parametrize(
    "question",
    [
        "and how do I change it?",
        "What about pgvector?",
        "How about Chroma?",
        "Also for PDF files?",
        "Why?",
        "Which version?",
        "Does that embed everything again?",
        "How do I list them?",
        "Which one is faster?",
        "Is it good enough for real work?",
    ],
)
def test_follow_ups_are_detected(question: str) -> None:
    assert is_follow_up(question)


@pytest.mark.parametrize(
    "question",
    [
        "What is the default chunk size?",
        "How do I install the Qdrant backend?",
        "Is there a way to filter search results by page?",
        "Which embedding model does ragkit use by default?",
    ],
)
def test_standalone_questions_are_not_follow_ups(question: str) -> None:
    assert not is_follow_up(question)


def test_a_chain_of_follow_ups_reaches_back_to_the_topic() -> None:
    history = [
        ("Which vector store is the default?", "FAISS is the default vector store."),
        ("Does it support HNSW?", "An HNSW index is optional."),
    ]
    query, how = standalone("and why would I use that?", history, None)
    assert how in ("join", "merge")
    assert "vector store" in query.lower() and "hnsw" in query.lower()


def test_plausible_rewrite_checks() -> None:
    q = "and how do I change it?"
    assert plausible_rewrite("How do I change the default chunk size?", q, CHUNK_SIZE)
    assert not plausible_rewrite("How do I change it?", q, CHUNK_SIZE)  # nothing resolved
    assert not plausible_rewrite("How do I change the chunk size?", q, [])
    assert not plausible_rewrite("What is the default chunk size?", q, CHUNK_SIZE)  # lost "change"


def test_multiturn_set_is_large_and_its_gold_sources_exist() -> None:
    convs = load()
    assert len(convs) >= 20
    assert len({c["id"] for c in convs}) == len(convs)
    for c in convs:
        assert (DATA / c["source"]).is_file(), c["source"]
        assert c["history"] and all(len(turn) == 2 for turn in c["history"])
        assert c["question"].strip()


def test_rag_eval_multiturn_ingests_the_corpus_and_measures_the_follow_ups(
    hashing_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "multiturn.json"
    run = subprocess.run(
        [sys.executable, "-m", "apps.cli", "eval", "multiturn", "--no-local", "--out", str(out)],
        env=hashing_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "| none |" in run.stdout and "standalone extractive (merge)" in run.stdout
    result = json.loads(out.read_text())
    assert result["conversations"] == len(load()) and result["k"] == 5
    methods = result["methods"]
    assert set(methods) == {
        "none",
        "standalone extractive (join)",
        "standalone extractive (merge)",
    }
    assert methods["standalone extractive (merge)"]["hits"] > methods["none"]["hits"]


def test_rag_chat_shows_what_each_follow_up_searched_for(
    hashing_env: dict[str, str], tmp_path: Path
) -> None:
    """In `rag chat` every follow-up turn prints the query that was searched, made
    standalone (the first question is searched as asked, and says nothing)."""
    env = {**hashing_env, "HF_HUB_OFFLINE": "1", "RAG_GENERATOR": "extractive"}
    rag = [sys.executable, "-m", "apps.cli"]
    ingest = subprocess.run(
        [*rag, "ingest", str(DATA)], env=env, capture_output=True, text=True, timeout=300
    )
    assert ingest.returncode == 0, ingest.stderr
    chat = subprocess.run(
        [*rag, "chat"],
        input="What is the default chunk size?\nand how do I change it?\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    searched = [line for line in chat.stdout.splitlines() if line.startswith("(searched for:")]
    assert len(searched) == 1
    assert "how do I change it" in searched[0] and "chunk size" in searched[0]
