"""The ``openvino`` embedding backend: the exported fp32 ONNX graph on OpenVINO Runtime (CPU).

It runs ``model.onnx``, the graph as torch exported it (:func:`~rag.embeddings.onnx_export.
prepare_onnx` with ``serve_plain``; the ``onnx`` backend's fused graph holds ONNX Runtime's
own operators), in the same model cache, and shares the ONNX backends' tokenising, batching
and pooling (:class:`~rag.embeddings.onnx_runtime.GraphEmbedder`). OpenVINO picks the
inference precision for the CPU: bf16 where it has AMX or AVX-512 BF16, else fp32.

Two compiled models: documents on ``RAG_ONNX_THREADS`` or the physical cores, single search
queries on one thread (see :data:`QUERY_THREADS`). Compiled blobs are cached in the model's
folder (``openvino/``), so a second process skips compiling.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import models_dir
from rag.embeddings import EmbedderSpec
from rag.embeddings.onnx_export import prepare_onnx, read_model_spec
from rag.embeddings.onnx_runtime import DEFAULT_BATCH_SIZE, GraphEmbedder, onnx_threads
from rag.errors import EmbeddingError, MissingDependencyError

#: Threads for one search query: a query is a few dozen tokens, too little work to split,
#: and on a busy CPU a second thread is one more to wait for (30 SciFact claims on a 2-core
#: CPU at load 4-5: p50 3.9 ms on one thread against 16 ms on two; 11 against 47 at load 5+).
QUERY_THREADS = 1
#: The folder inside the model's cache folder that holds OpenVINO's compiled blobs.
BLOB_DIR = "openvino"


class OpenVinoEmbedder(GraphEmbedder):
    """A sentence-transformers model's exported fp32 graph compiled by OpenVINO for the CPU.

    ``cache_dir`` is the model cache shared with the ONNX backends (default
    :func:`rag.config.models_dir`); ``threads`` defaults to ``RAG_ONNX_THREADS`` or the
    physical cores; ``query_threads`` runs :meth:`embed_query`. ``config`` adds OpenVINO CPU
    properties to both compiled models (e.g. ``{"INFERENCE_PRECISION_HINT": "f32"}``).
    """

    backend = "openvino"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache_dir: Path | None = None,
        threads: int | None = None,
        query_threads: int = QUERY_THREADS,
        config: dict[str, Any] | None = None,
    ) -> None:
        if importlib.util.find_spec("openvino") is None:
            raise MissingDependencyError("the openvino embedding backend", "openvino", "openvino")
        import openvino as ov

        super().__init__(read_model_spec(model), batch_size=batch_size)
        self.path = prepare_onnx(
            self.spec,
            Path(cache_dir) if cache_dir is not None else models_dir(),
            quantized=False,
            serve_plain=True,
        )
        self.threads = onnx_threads(threads)
        self.query_threads = max(1, int(query_threads))
        self.blob_dir = self.path.parent / BLOB_DIR
        core = ov.Core()
        # One stream: each call is one request that should use every thread it is given.
        # Threads not pinned to cores: on a CPU shared with other work (the store, a server,
        # other jobs) a pinned thread waits for its busy core; 2-core CPU at load 4-5, one
        # query: p50 9.2 ms unpinned against 11.2 pinned alone, 11.8 against 18.1 beside ONNX
        # Runtime; documents the same (32.5 against 32.1 passages/s).
        base = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False, **(config or {})}
        try:
            core.set_property({"CACHE_DIR": str(self.blob_dir)})
            # From the path (not read_model): the cache is keyed by the file, so a cached blob
            # is loaded without reading or hashing the graph.
            self._docs = core.compile_model(
                str(self.path), "CPU", {**base, "INFERENCE_NUM_THREADS": self.threads}
            )
            self._query = core.compile_model(
                str(self.path), "CPU", {**base, "INFERENCE_NUM_THREADS": self.query_threads}
            )
        except Exception as e:
            raise EmbeddingError(f"OpenVINO cannot compile {self.path}: {e}") from e
        #: The inference precision OpenVINO chose (bf16 on CPUs with AMX or AVX-512 BF16).
        self.precision = self._docs.get_property("INFERENCE_PRECISION_HINT").to_string()
        #: Whether both compiled models came from blobs cached by an earlier load.
        self.from_cache = all(
            bool(c.get_property("LOADED_FROM_CACHE")) for c in (self._docs, self._query)
        )
        self._inputs = {port.get_any_name() for port in self._docs.inputs}
        # An infer request serves one call at a time: each thread gets its own.
        self._local = threading.local()

    def _request(self, query: bool) -> Any:
        key = "query" if query else "docs"
        req = getattr(self._local, key, None)
        if req is None:
            req = (self._query if query else self._docs).create_infer_request()
            setattr(self._local, key, req)
        return req

    def _hidden(self, ids: np.ndarray, mask: np.ndarray, *, query: bool) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        req = self._request(query)
        req.infer(feed)
        # A view of the request's own buffer: pooled by _encode before this thread's next call.
        return req.get_output_tensor(0).data


def create(spec: EmbedderSpec) -> OpenVinoEmbedder:
    """The ``openvino`` plugin."""
    return OpenVinoEmbedder(spec.model, batch_size=spec.batch_size, cache_dir=spec.cache_dir)
