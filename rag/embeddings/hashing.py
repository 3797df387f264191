"""The ``hashing`` embedding backend: a deterministic embedder with no model, for tests."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence

import numpy as np

from rag.embeddings import EmbedderSpec
from rag.errors import ConfigError

DEFAULT_DIM = 384
_WORD = re.compile(r"\w+", re.UNICODE)
_MODEL = re.compile(r"hashing-(\d+)")


class HashingEmbedder:
    """A deterministic bag-of-words embedder with no model: feature hashing of words and word
    pairs. Fast and dependency-free, for tests and smoke runs; it does not capture meaning."""

    backend = "hashing"

    def __init__(self, dim: int = DEFAULT_DIM, *, max_tokens: int = 254) -> None:
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


def create(spec: EmbedderSpec) -> HashingEmbedder:
    """The ``hashing`` plugin: the model ``hashing-<dim>`` sets the dimension; any other
    model name gets :data:`DEFAULT_DIM` dimensions (there are no weights to load)."""
    if spec.model.startswith("hashing-"):
        match = _MODEL.fullmatch(spec.model)
        if match is None:
            raise ConfigError(
                f"the hashing embedder's model is hashing-<dimensions>, not {spec.model!r}"
            )
        return HashingEmbedder(int(match.group(1)))
    return HashingEmbedder(DEFAULT_DIM)
