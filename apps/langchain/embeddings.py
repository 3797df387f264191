"""ragkit's embedders as a LangChain ``Embeddings``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

from rag.config import DEFAULT_EMBED_MODEL, default_embed_backend, models_dir
from rag.embeddings import Embedder, load_embedder
from rag.errors import ConfigError


class RagkitEmbeddings(Embeddings):
    """A ragkit embedder (``torch``, ``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8``,
    ``hashing`` or a plugin's) under LangChain.

    ``RagkitEmbeddings()`` is ragkit's default: all-MiniLM-L6-v2 on INT8
    (:func:`rag.config.default_embed_backend`: OpenVINO on CPUs with VNNI, ONNX Runtime
    elsewhere; made once into the models folder, then reused), else on torch. ``model`` and ``backend`` choose another, as ``--embed-model`` and
    ``--embed-backend`` do; ``embedder`` wraps one already loaded (a collection's, say:
    ``RagkitEmbeddings(embedder=collection.embedder)``). Vectors are unit length, as every
    ragkit store expects. Async calls run the same code in a thread (LangChain's default).
    """

    def __init__(
        self,
        model: str | None = None,
        backend: str | None = None,
        *,
        batch_size: int = 32,
        cache_dir: str | Path | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        if embedder is not None:
            if model is not None or backend is not None:
                raise ConfigError("give either an embedder or a model and backend, not both")
            self.embedder = embedder
            return
        model = model or DEFAULT_EMBED_MODEL
        self.embedder = load_embedder(
            model,
            backend or default_embed_backend(model),
            batch_size=batch_size,
            cache_dir=Path(cache_dir) if cache_dir is not None else models_dir(),
        )

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        texts = list(texts)
        if not texts:
            return []
        return np.asarray(self.embedder.embed(texts), dtype=np.float32).tolist()

    def embed_query(self, text: str) -> list[float]:
        return np.asarray(self.embedder.embed_query(text), dtype=np.float32).tolist()

    def __repr__(self) -> str:
        return f"RagkitEmbeddings(model={self.embedder.id!r}, backend={self.embedder.backend!r})"
