"""Retrieval modes: fusion, MMR, BM25 kept in sync, the optional re-ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.collection import open_collection
from rag.config import Settings
from rag.errors import ConfigError, EmbeddingError
from rag.rerank import Reranker
from rag.retrieval import fuse, mmr_rerank
from rag.types import Chunk, Hit


def hit(i: str, score: float, text: str = "") -> Hit:
    return Hit(i, score, Chunk(i, text or i, {"source": f"/{i}"}))


def test_rrf_by_hand() -> None:
    dense = [hit("a", 0.9), hit("b", 0.8), hit("c", 0.7)]
    sparse = [hit("c", 12.0), hit("d", 9.0)]
    fused = fuse(dense, sparse, k=4, method="rrf", rrf_k=60)
    scores = {h.id: h.score for h in fused}
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)  # 3rd in dense, 1st in sparse
    assert scores["a"] == pytest.approx(1 / 61)
    assert scores["d"] == pytest.approx(1 / 62)
    assert scores["b"] == scores["d"]  # both second in one list: a tie, broken by id
    assert [h.id for h in fused] == ["c", "a", "b", "d"]


def test_weighted_fusion_by_hand() -> None:
    dense = [hit("a", 0.9), hit("b", 0.5)]
    sparse = [hit("b", 10.0), hit("c", 2.0)]
    fused = fuse(dense, sparse, k=3, method="weighted", weight=0.25)
    scores = {h.id: h.score for h in fused}
    assert scores["a"] == pytest.approx(0.25 * 1.0)
    assert scores["b"] == pytest.approx(0.25 * 0.0 + 0.75 * 1.0)
    assert scores["c"] == pytest.approx(0.0)
    assert [h.id for h in fused][:2] == ["b", "a"]
    with pytest.raises(ConfigError):
        fuse(dense, sparse, k=3, method="max")


def test_mmr_prefers_a_diverse_second_pick() -> None:
    q = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    vecs = np.array([[0.9, 0.43589, 0.0], [0.89, 0.4559, 0.0], [0.8, 0.0, 0.6]], dtype=np.float32)
    hits = [hit("near1", 0.9), hit("near2", 0.89), hit("other", 0.8)]
    assert [h.id for h in mmr_rerank(q, hits, vecs, k=2, lam=1.0)] == ["near1", "near2"]
    assert [h.id for h in mmr_rerank(q, hits, vecs, k=2, lam=0.5)] == ["near1", "other"]


class _KeywordScorer:
    """A stand-in scorer for the plumbing test: counts the query's words in the passage."""

    def predict(self, pairs: list[tuple[str, str]]) -> list[int]:
        return [sum(w in p.lower() for w in q.lower().split()) for q, p in pairs]


def test_reranker_reorders_by_its_scores() -> None:
    hits = [
        hit("a", 0.9, "nothing relevant"),
        hit("b", 0.5, "red apples and green pears"),
        hit("c", 0.4, "apples"),
    ]
    out = Reranker(_KeywordScorer()).rerank("green apples", hits, k=2)
    assert [h.id for h in out] == ["b", "c"]
    assert out[0].score == 2.0


def test_a_missing_cross_encoder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError, match="downloads nothing"):
        Reranker(str(tmp_path / "no-such-cross-encoder"))


def test_modes_and_bm25_follow_ingests(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nThe quokka smiles on Rottnest Island.\n")
    (docs / "b.md").write_text("# B\n\nPenguins huddle against the Antarctic wind.\n")
    s = Settings(data_dir=tmp_path / "rag", embed_model="hashing-384", embed_backend="hashing")
    with open_collection(s, create=True) as col:
        col.ingest([docs])
        for mode in ("dense", "bm25", "hybrid"):
            hits = col.search("quokka Rottnest", mode=mode, k=2)
            assert Path(hits[0].chunk.source).name == "a.md", mode
        assert col.search("zebra xylophone", mode="bm25") == []
        # A new file is searchable by keyword right after the ingest that brought it.
        (docs / "c.md").write_text("# C\n\nThe axolotl regrows its limbs.\n")
        col.ingest([docs])
        assert Path(col.search("axolotl", mode="bm25")[0].chunk.source).name == "c.md"
        hits = col.search("axolotl quokka penguins", mode="bm25", where={"title": "A"})
        assert [Path(h.chunk.source).name for h in hits] == ["a.md"]
        assert len(col.search("the", mode="dense", mmr=True, k=2)) == 2
    # The keyword index was saved and is reused by the next process (same stamp).
    assert (s.data_dir / "collections" / "faiss" / "default" / "bm25" / "stamp").exists()


def test_fusion_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        Settings(fusion="max")
    with pytest.raises(ConfigError):
        Settings(fusion_weight=1.5)
    with pytest.raises(ConfigError):
        Settings(rrf_k=0)


def test_a_collection_without_indexable_words_searches_empty(tmp_path: Path) -> None:
    # Only punctuation: BM25 has no vocabulary (building its index used to crash the ingest).
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "marks.txt").write_text("%%% ### !!!\n")
    s = Settings(data_dir=tmp_path / "rag", embed_model="hashing-64", embed_backend="hashing")
    with open_collection(s, create=True) as col:
        report = col.ingest([folder])
        assert report.chunks == 1 and not report.failed
        assert col.search("anything", mode="bm25") == []
        assert len(col.search("anything", mode="hybrid")) == 1
