"""ONNX Runtime embedding backends (``onnx`` and ``onnx-int8``) for sentence-transformers models.

The first use of a model exports it into the cache (:mod:`rag.embeddings.onnx_export`);
later runs load the cached graph with ``onnxruntime`` and the model's ``tokenizer.json``
through ``tokenizers``: neither torch nor sentence-transformers is imported, so the CLI
starts fast. Vectors match the torch backend's (same tokenisation, truncation and pooling).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.config import models_dir
from rag.embeddings import EmbedderSpec
from rag.embeddings.models import TokenCounter
from rag.embeddings.onnx_export import (
    DEFAULT_INT8_RECIPE,
    ModelSpec,
    QuantRecipe,
    onnx_session,
    prepare_onnx,
    read_model_spec,
)
from rag.errors import EmbeddingError, MissingDependencyError

DEFAULT_BATCH_SIZE = 32


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's units)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def onnx_threads(threads: int | None = None) -> int:
    """``threads`` if given, else ``RAG_ONNX_THREADS``, else :func:`physical_cores`."""
    if threads is None:
        env = os.environ.get("RAG_ONNX_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else physical_cores()
    return threads


class GraphEmbedder:
    """What the backends running an exported graph share: tokenising, length-sorted batches
    padded to their longest, pooling and normalising. A subclass sets ``backend`` and
    ``path`` and runs the graph in :meth:`_hidden`."""

    backend: str
    path: Path

    def __init__(self, spec: ModelSpec, *, batch_size: int) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.spec = spec
        self.id = spec.model_id
        self.dim = spec.dim
        self.batch_size = max(1, int(batch_size))
        self._tok = spec.tokenizer()
        self._special = len(self._tok.encode("").ids)
        self.max_tokens = spec.max_seq_length - self._special
        self.count_tokens = TokenCounter(spec.transformer_dir / "tokenizer.json")

    def _hidden(self, ids: np.ndarray, mask: np.ndarray, *, query: bool) -> np.ndarray:
        """The last hidden state (batch, sequence, dim); ``query``: one search query."""
        raise NotImplementedError

    def _prepare(self, text: str) -> str:
        text = self.spec.prompt + text
        return text.lower() if self.spec.do_lower_case else text

    def _encode(self, ids: np.ndarray, mask: np.ndarray, *, query: bool = False) -> np.ndarray:
        try:
            hidden = self._hidden(ids, mask, query=query)
        except Exception as e:
            raise EmbeddingError(f"embedding with {self.id} ({self.backend}) failed: {e}") from e
        if self.spec.pooling == "cls":
            vecs = hidden[:, 0, :]
        else:
            weights = mask.astype(np.float32)
            vecs = np.einsum("bld,bl->bd", hidden, weights) / np.maximum(
                weights.sum(1, keepdims=True), 1e-9
            )
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return (vecs / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encs = self._tok.encode_batch([self._prepare(t) for t in texts])
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        # Batches of similar length waste little on padding; out[] restores the input order.
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            ids = np.zeros((len(rows), int(lengths[rows[0]])), dtype=np.int64)
            mask = np.zeros_like(ids)
            for i, row in enumerate(rows):
                n = lengths[row]
                ids[i, :n] = encs[row].ids
                mask[i, :n] = 1
            out[rows] = self._encode(ids, mask)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        ids = np.asarray([self._tok.encode(self._prepare(text)).ids], dtype=np.int64)
        return self._encode(ids, np.ones_like(ids), query=True)[0]


class OnnxEmbedder(GraphEmbedder):
    """A sentence-transformers model running on ONNX Runtime (CPU), fp32 or dynamic INT8.

    The first use exports the model with torch into ``cache_dir`` (default: the user's model
    cache, :func:`rag.config.models_dir`); later uses load the cached graph without importing
    torch. Threads: ``RAG_ONNX_THREADS`` or the physical cores. ``keep_intermediates`` keeps
    the export's intermediate graphs (see :func:`~rag.embeddings.onnx_export.prepare_onnx`).
    """

    def __init__(
        self,
        model: str,
        *,
        quantized: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_dir: Path | None = None,
        recipe: QuantRecipe | None = None,
        threads: int | None = None,
        keep_intermediates: bool = False,
    ) -> None:
        if importlib.util.find_spec("onnxruntime") is None:
            raise MissingDependencyError("the onnx embedding backend", "onnxruntime", "onnx")
        super().__init__(read_model_spec(model), batch_size=batch_size)
        self.backend = "onnx-int8" if quantized else "onnx"
        self.recipe = (recipe or DEFAULT_INT8_RECIPE) if quantized else None
        self.path = prepare_onnx(
            self.spec,
            Path(cache_dir) if cache_dir is not None else models_dir(),
            quantized=quantized,
            recipe=self.recipe or DEFAULT_INT8_RECIPE,
            keep_intermediates=keep_intermediates,
        )
        self.threads = onnx_threads(threads)
        self._session = onnx_session(self.path, self.threads)
        self._needs_types = "token_type_ids" in {i.name for i in self._session.get_inputs()}

    def _hidden(self, ids: np.ndarray, mask: np.ndarray, *, query: bool) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._needs_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        return self._session.run(None, feed)[0]


def create_fp32(spec: EmbedderSpec) -> OnnxEmbedder:
    """The ``onnx`` plugin: the fp32 graph (fused where ONNX Runtime's fusions apply)."""
    return OnnxEmbedder(spec.model, batch_size=spec.batch_size, cache_dir=spec.cache_dir)


def create_int8(spec: EmbedderSpec) -> OnnxEmbedder:
    """The ``onnx-int8`` plugin: dynamic INT8 with :data:`DEFAULT_INT8_RECIPE`."""
    return OnnxEmbedder(
        spec.model, quantized=True, batch_size=spec.batch_size, cache_dir=spec.cache_dir
    )
