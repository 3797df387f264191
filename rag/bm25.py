"""A BM25 keyword index kept beside a collection.

Built with bm25s over the chunks in the store (English stop words removed, Snowball
stemming when PyStemmer is installed), saved under the collection's folder and stamped with
the state of the collection it reflects; an ingest that changes the collection rebuilds it,
and a stale or missing index is rebuilt before it is used.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import MissingDependencyError
from rag.filters import Filter, evaluate
from rag.types import Chunk, Hit

#: Okapi BM25 parameters. k1 = 0.9, b = 0.4 are the Anserini defaults used by the BEIR
#: baselines' Lucene runs.
K1 = 0.9
B = 0.4


def _stemmer() -> Any:
    if importlib.util.find_spec("Stemmer") is None:
        return None
    import Stemmer

    return Stemmer.Stemmer("english").stemWords


class BM25Index:
    """Chunk ids, their metadata and a bm25s index, loaded into memory."""

    def __init__(
        self, ids: list[str], metadata: list[dict], texts: list[str] | None, model: Any
    ) -> None:
        self.ids = ids
        self.metadata = metadata
        self.texts = texts
        self._model = model
        self._stem = _stemmer()

    @classmethod
    def build(cls, chunks: Sequence[Chunk]) -> BM25Index:
        if importlib.util.find_spec("bm25s") is None:
            raise MissingDependencyError("BM25 retrieval", "bm25s", "bm25")
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        stem = _stemmer()
        tokens = bm25s.tokenize(
            [c.text for c in chunks], stopwords="en", stemmer=stem, show_progress=False
        )
        # A collection whose texts hold no indexable word (only punctuation, say) has no
        # vocabulary: it gets no model, and every keyword search finds nothing.
        model = None
        if chunks and tokens.vocab:
            model = bm25s.BM25(k1=K1, b=B)
            model.index(tokens, show_progress=False)
        return cls(
            [c.id for c in chunks],
            [dict(c.metadata) for c in chunks],
            [c.text for c in chunks],
            model,
        )

    def save(self, folder: Path, stamp: str) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self._model is not None:
            self._model.save(str(tmp / "index"), show_progress=False)
        with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as f:
            for cid, meta, text in zip(self.ids, self.metadata, self.texts or [], strict=True):
                f.write(
                    json.dumps({"id": cid, "metadata": meta, "text": text}, ensure_ascii=False)
                    + "\n"
                )
        (tmp / "stamp").write_text(stamp)
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, stamp: str) -> BM25Index | None:
        """The saved index if it reflects ``stamp``, else ``None``."""
        try:
            if (folder / "stamp").read_text() != stamp:
                return None
        except OSError:
            return None
        import bm25s

        ids, metas, texts = [], [], []
        with open(folder / "chunks.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ids.append(row["id"])
                metas.append(row["metadata"])
                texts.append(row["text"])
        model = None
        if (folder / "index").exists():
            with contextlib.redirect_stderr(open(os.devnull, "w")):
                model = bm25s.BM25.load(str(folder / "index"), show_progress=False)
        return cls(ids, metas, texts, model)

    def search(self, query: str, *, k: int, where: Filter | None = None) -> list[Hit]:
        if not self.ids or self._model is None:
            return []
        import bm25s

        tokens = bm25s.tokenize(
            [query], stopwords="en", stemmer=self._stem, show_progress=False, return_ids=False
        )[0]
        ids = self._model.get_tokens_ids(tokens)
        if not ids:
            return []
        scores = np.asarray(self._model.get_scores_from_ids(ids), dtype=np.float32)
        if where is not None:
            mask = np.fromiter(
                (evaluate(where, m) for m in self.metadata), dtype=bool, count=len(self.ids)
            )
            scores = np.where(mask, scores, -np.inf)
        candidates = np.flatnonzero(scores > 0)
        if candidates.size == 0:
            return []
        kk = min(k, candidates.size)
        top = candidates[np.argpartition(-scores[candidates], kk - 1)[:kk]]
        top = top[np.argsort(-scores[top], kind="stable")]
        texts = self.texts or [""] * len(self.ids)
        return [
            Hit(self.ids[i], float(scores[i]), Chunk(self.ids[i], texts[i], self.metadata[i]))
            for i in top
        ]
