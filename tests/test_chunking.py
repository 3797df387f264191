"""Chunking: sized in the model's tokens, never over its limit, stable ids, headings."""

from __future__ import annotations

import random

import pytest

from rag.chunking import Chunker, ChunkerSettings
from rag.embeddings import load_embedder
from rag.embeddings.hashing import HashingEmbedder
from rag.types import Document
from tests.conftest import DATA


def _chunker(emb, size: int = 200, overlap: int = 32) -> Chunker:
    return Chunker(
        ChunkerSettings(size, overlap),
        count_tokens=emb.count_tokens,
        max_tokens=emb.max_tokens,
        tokenizer_id=emb.id,
    )


def _nasty_text(seed: int) -> str:
    rng = random.Random(seed)
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzÄÖÜßéèçñ漢字仮名한국어Ωπ∑0123456789-_/.:;,!?()[]{}<>@#$%^&*"
    )
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(4000)]
    paragraphs = [" ".join(words[i : i + rng.randint(5, 400)]) for i in range(0, 4000, 200)]
    return "\n\n".join(paragraphs) + "\n" + "x" * 5000  # and one enormous "word"


@pytest.mark.slow
@pytest.mark.parametrize(("size", "fast"), [(200, True), (254, True), (400, True), (200, False)])
def test_no_chunk_exceeds_the_model_limit(size: int, fast: bool) -> None:
    emb = load_embedder()
    settings = ChunkerSettings(size, min(32, size // 4))
    chunker = (
        Chunker.for_embedder(settings, emb)
        if fast
        else _chunker(emb, size=size, overlap=min(32, size // 4))
    )
    assert (chunker._token_starts is not None) is fast
    docs = [
        Document("/t/nasty.txt", _nasty_text(1)),
        Document(
            "/t/nasty.md",
            "# Title\n\n" + _nasty_text(2) + "\n\n## More\n\n```\n# code\n```\n",
            format="markdown",
        ),
    ]
    chunks = chunker.chunk(docs[:1]) + chunker.chunk(docs[1:])
    assert len(chunks) > 50
    # The real tokenizer, special tokens included, against the model's max_seq_length.
    tok = emb._model.tokenizer
    lengths = [
        len(ids) for ids in tok([c.text for c in chunks], add_special_tokens=True)["input_ids"]
    ]
    assert max(lengths) <= emb._model.max_seq_length == 256
    assert chunker.size == min(size, 254)


@pytest.mark.slow
def test_offset_counting_gives_the_same_chunks() -> None:
    """Counting pieces from one tokenisation of the document (the fast path) cuts exactly
    where tokenising every piece would."""
    emb = load_embedder()
    settings = ChunkerSettings(200, 32)
    fast, slow = Chunker.for_embedder(settings, emb), _chunker(emb)
    docs = [
        Document("/t/a.txt", _nasty_text(3)),
        Document("/t/b.md", "# T\n\n" + _nasty_text(4), format="markdown"),
        Document("/t/c.txt", "Sentence one. " * 400 + "\n\n" + "ü-ö " * 300),
    ]
    for doc in docs:
        assert [c.text for c in fast.chunk([doc])] == [c.text for c in slow.chunk([doc])]


def test_ids_are_stable_and_depend_on_source_and_settings() -> None:
    emb = HashingEmbedder(32)
    text = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(12))
    a = _chunker(emb, 64, 8).chunk([Document("/a.txt", text)])
    again = _chunker(emb, 64, 8).chunk([Document("/a.txt", text)])
    other_source = _chunker(emb, 64, 8).chunk([Document("/b.txt", text)])
    other_size = _chunker(emb, 48, 8).chunk([Document("/a.txt", text)])
    assert [c.id for c in a] == [c.id for c in again]
    assert not {c.id for c in a} & {c.id for c in other_source}
    assert not {c.id for c in a} & {c.id for c in other_size}
    assert len({c.id for c in a}) == len(a)


def test_repeated_text_gets_distinct_ids() -> None:
    emb = HashingEmbedder(32)
    chunks = _chunker(emb, 16, 0).chunk([Document("/r.txt", "same words here again\n\n" * 6)])
    assert len(chunks) >= 2
    assert len({c.id for c in chunks}) == len(chunks)


def test_size_and_overlap_in_tokens() -> None:
    emb = HashingEmbedder(32)
    words = [f"w{i}" for i in range(1000)]
    chunks = _chunker(emb, 100, 20).chunk([Document("/w.txt", " ".join(words))])
    counts = emb.count_tokens([c.text for c in chunks])
    assert max(counts) <= 100
    assert min(counts[:-1]) >= 80
    first, second = chunks[0].text.split(), chunks[1].text.split()
    shared = set(first) & set(second)
    assert 10 <= len(shared) <= 20  # overlap, in tokens


def test_markdown_headings_and_metadata() -> None:
    emb = HashingEmbedder(32)
    md = (
        "# Guide\n\nIntro.\n\n## Install\n\n"
        + "Install words. " * 80
        + "\n\n```bash\n# a comment, not a heading\npip install x\n```\n\n## Use\n\nUse it.\n"
    )
    doc = Document("/g.md", md, {"source": "/g.md", "title": "Guide", "page": 2}, format="markdown")
    chunks = _chunker(emb, 64, 0).chunk([doc])
    headings = [c.metadata.get("heading") for c in chunks]
    assert headings[0] == "Guide"
    assert "Guide > Install" in headings
    assert headings[-1] == "Guide > Use"
    assert all("a comment, not a heading" not in (h or "") for h in headings)
    assert all(c.metadata["title"] == "Guide" and c.metadata["page"] == 2 for c in chunks)
    assert [c.metadata["chunk_index"] for c in chunks] == list(range(len(chunks)))
    # A heading cut off from a long section travels with the section's first chunk.
    install = next(c for c in chunks if c.metadata.get("heading") == "Guide > Install")
    assert install.text.startswith("## Install\n\nInstall words.")


def test_markdown_sections_are_kept_apart() -> None:
    """Small neighbouring sections are not packed together: each chunk lies within one
    section and carries that section's heading (a section that holds only its heading goes
    with the first chunk of the subsection it opens, under the subsection's heading)."""
    emb = HashingEmbedder(32)
    md = (
        "# Formats\n\nragkit reads files.\n\n"
        "## PDF\n\nPDF files are read page by page.\n\n"
        "## Word documents\n\nThe older `.doc` format is not supported.\n\n"
        "## Options\n\n### Size\n\nThe size limit is 50 MB.\n"
    )
    chunks = _chunker(emb, 200, 0).chunk([Document("/f.md", md, format="markdown")])
    assert [(c.metadata.get("heading"), c.text) for c in chunks] == [
        ("Formats", "# Formats\n\nragkit reads files."),
        ("Formats > PDF", "## PDF\n\nPDF files are read page by page."),
        (
            "Formats > Word documents",
            "## Word documents\n\nThe older `.doc` format is not supported.",
        ),
        ("Formats > Options > Size", "## Options\n\n### Size\n\nThe size limit is 50 MB."),
    ]


def test_guide_doc_sentence_sits_under_its_own_heading() -> None:
    """data/05-file-formats.md: the sentence about `.doc` files is cited under "Word
    documents", not under the section before it."""
    emb = HashingEmbedder(32)
    path = DATA / "05-file-formats.md"
    doc = Document(str(path), path.read_text(encoding="utf-8"), format="markdown")
    chunks = _chunker(emb).chunk([doc])
    about_doc = [c for c in chunks if "`.doc`" in c.text]
    assert about_doc
    assert {c.metadata.get("heading") for c in about_doc} == {
        "Supported File Formats > Word documents"
    }
    assert all(len(c.text.split("\n## ")) == 1 for c in chunks)  # one section per chunk
