"""The ``torch`` embedding backend: a sentence-transformers model on PyTorch, on the GPU
when PyTorch sees one (a CUDA build of torch; a Ray actor given ``--ray-num-gpus``), else
on the CPU."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.config import DEFAULT_EMBED_MODEL
from rag.embeddings import EmbedderSpec
from rag.embeddings.models import TokenCounter, quiet_transformers, resolve_model
from rag.errors import EmbeddingError, MissingDependencyError


class SentenceTransformerEmbedder:
    """A sentence-transformers model running on PyTorch; ``device`` is ``cuda`` when PyTorch
    sees a GPU, else ``cpu``."""

    backend = "torch"

    def __init__(self, model: str = DEFAULT_EMBED_MODEL, *, batch_size: int = 32) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise MissingDependencyError(
                "the torch embedding backend", "sentence-transformers", "all"
            )
        self.id, location = resolve_model(model)
        self.batch_size = batch_size
        quiet_transformers()
        import torch
        from sentence_transformers import SentenceTransformer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self._model = SentenceTransformer(location, device=self.device)
        except Exception as e:
            raise EmbeddingError(
                f"could not load the embedding model {model!r}: {e}. Offline, give a local "
                "model folder with --embed-model (or RAG_EMBED_MODEL)"
            ) from e
        dim = self._model.get_embedding_dimension()
        if not dim:
            raise EmbeddingError(f"model {model!r} does not report its embedding dimension")
        self.dim = int(dim)
        special = len(self._model.tokenizer("", add_special_tokens=True)["input_ids"])
        self.max_tokens = int(self._model.max_seq_length) - special
        tok_json = Path(location) / "tokenizer.json"
        if tok_json.exists():
            self.count_tokens = TokenCounter(tok_json)  # type: ignore[method-assign]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        tok = self._model.tokenizer
        return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            vecs = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except Exception as e:
            raise EmbeddingError(f"embedding with {self.id} failed: {e}") from e
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def create(spec: EmbedderSpec) -> SentenceTransformerEmbedder:
    """The ``torch`` plugin (``spec.cache_dir`` is unused: nothing is converted)."""
    return SentenceTransformerEmbedder(spec.model, batch_size=spec.batch_size)
