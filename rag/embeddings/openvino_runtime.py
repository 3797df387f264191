"""The ``openvino`` and ``openvino-int8`` embedding backends: the exported graph on OpenVINO
Runtime (CPU).

``openvino`` runs ``model.onnx``, the graph as torch exported it (:func:`~rag.embeddings.
onnx_export.prepare_onnx` with ``serve_plain``; the ``onnx`` backend's fused graph holds ONNX
Runtime's own operators), in the same model cache, and shares the ONNX backends' tokenising,
batching and pooling (:class:`~rag.embeddings.onnx_runtime.GraphEmbedder`). OpenVINO picks
the inference precision for the CPU: bf16 where it has AMX or AVX-512 BF16, else fp32.

``openvino-int8`` (the default on CPUs with VNNI, :func:`rag.config.default_embed_backend`)
runs the same graph quantised statically to INT8 by NNCF, every matrix product included
(the attention's too), with activation ranges measured once on fixed texts
(:mod:`rag.embeddings.calibration_texts`): ``model-int8-ov-<key>.xml`` and ``.bin`` beside
``model.onnx``, made on first use (about 20 s) under the export's file lock. On a 2-core
AMD EPYC with AVX-512 VNNI it embedded SciFact passages about 4 times as fast as torch
(3.95 to 3.98 in wall time, 4.2 to 4.5 in CPU time, side by side)
at a mean cosine of 0.995 to torch's vectors (docs/benchmarks.md).

Two compiled models: documents on ``RAG_ONNX_THREADS`` or the physical cores, single search
queries on one thread (see :data:`QUERY_THREADS`). Compiled blobs are cached in the model's
folder (``openvino/``), so a second process skips compiling.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import installed_versions, models_dir
from rag.embeddings import EmbedderSpec
from rag.embeddings.onnx_export import (
    ModelSpec,
    file_lock,
    logger,
    model_key,
    prepare_onnx,
    quiet_logging,
    read_json,
    read_model_spec,
    write_json,
)
from rag.embeddings.onnx_runtime import DEFAULT_BATCH_SIZE, GraphEmbedder, onnx_threads
from rag.errors import EmbeddingError, MissingDependencyError

#: Threads for one search query: a query is a few dozen tokens, too little work to split,
#: and on a busy CPU a second thread is one more to wait for (30 SciFact claims on a 2-core
#: CPU at load 4-5: p50 3.9 ms on one thread against 16 ms on two; 11 against 47 at load 5+).
QUERY_THREADS = 1
#: The folder inside the model's cache folder that holds OpenVINO's compiled blobs.
BLOB_DIR = "openvino"
#: Bump when the INT8 model is made differently: a new version makes a new file.
INT8_VERSION = 1


@functools.cache
def int8_key() -> str:
    """What the INT8 model is made from beyond the export: the calibration texts and the
    recipe's version (the export's own key names the folder)."""
    from rag.embeddings.calibration_texts import TEXTS

    h = hashlib.sha256(f"v{INT8_VERSION}".encode())
    for text in TEXTS:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()[:8]


def prepare_openvino_int8(spec: ModelSpec, cache_dir: Path) -> Path:
    """The cached OpenVINO INT8 model (``.xml``; its weights in the ``.bin`` beside it) for
    ``spec``, made from the plain export once per ``cache_dir``.

    NNCF quantises every MatMul statically (``ModelType.TRANSFORMER``: per-channel symmetric
    weights, activations with ranges measured on :data:`~rag.embeddings.calibration_texts.
    TEXTS`, each text one sample, truncated as the model truncates). Concurrent processes wait
    for one another on the export's lock; files appear by atomic rename only.
    """
    file = f"model-int8-ov-{int8_key()}.xml"
    dest = cache_dir / model_key(spec) / file
    if dest.is_file() and dest.with_suffix(".bin").is_file():
        return dest  # made before: the plain export is not even looked at
    plain = prepare_onnx(spec, cache_dir, quantized=False, serve_plain=True)
    folder = plain.parent
    dest = folder / file
    name = Path(spec.model_id).name
    with file_lock(folder, waiting=lambda: logger.info("waiting for another process…")):
        if dest.is_file() and dest.with_suffix(".bin").is_file():
            return dest
        if importlib.util.find_spec("nncf") is None:
            raise MissingDependencyError("the openvino-int8 embedding backend", "nncf", "openvino")
        logger.info("quantising %s to INT8 for OpenVINO, once per machine…", name)
        started = time.perf_counter()
        import nncf
        import openvino as ov

        from rag.embeddings.calibration_texts import TEXTS

        tok = spec.tokenizer()
        model = ov.Core().read_model(str(plain))
        inputs = {port.get_any_name() for port in model.inputs}

        def sample(text: str) -> dict[str, np.ndarray]:
            enc = tok.encode(text.lower() if spec.do_lower_case else text)
            ids = np.asarray([enc.ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            return feed

        try:
            with quiet_logging("nncf", logging.WARNING):  # its tables of statistics
                quantized = nncf.quantize(
                    model,
                    nncf.Dataset(list(TEXTS), sample),
                    model_type=nncf.ModelType.TRANSFORMER,
                    subset_size=len(TEXTS),
                )
            # Saved under temporary names, then renamed: the .bin first, so that an .xml
            # on disk always has its weights.
            token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp = folder / f".{dest.stem}.{token}.xml"
            ov.save_model(quantized, str(tmp), compress_to_fp16=False)
            os.replace(tmp.with_suffix(".bin"), dest.with_suffix(".bin"))
            os.replace(tmp, dest)
        except Exception as e:
            for leftover in folder.glob(f".{dest.stem}.*"):
                leftover.unlink(missing_ok=True)
            raise EmbeddingError(f"NNCF cannot quantise {plain} to INT8: {e}") from e
        seconds = time.perf_counter() - started
        info = read_json(folder / "export.json")
        info["openvino_int8"] = {
            "file": dest.name,
            "calibration_texts": len(TEXTS),
            "seconds": round(seconds, 2),
            "versions": installed_versions(("nncf", "openvino")),
        }
        write_json(folder / "export.json", info)
        logger.info("quantised %s to INT8 for OpenVINO in %.1f s", name, seconds)
        return dest


class OpenVinoEmbedder(GraphEmbedder):
    """A sentence-transformers model's exported graph compiled by OpenVINO for the CPU: fp32
    (bf16 where the CPU has it), or with ``quantized`` the static INT8 model of
    :func:`prepare_openvino_int8`.

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
        quantized: bool = False,
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
        self.backend = "openvino-int8" if quantized else "openvino"
        cache = Path(cache_dir) if cache_dir is not None else models_dir()
        if quantized:
            self.path = prepare_openvino_int8(self.spec, cache)
        else:
            self.path = prepare_onnx(self.spec, cache, quantized=False, serve_plain=True)
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


def create_int8(spec: EmbedderSpec) -> OpenVinoEmbedder:
    """The ``openvino-int8`` plugin."""
    return OpenVinoEmbedder(
        spec.model, quantized=True, batch_size=spec.batch_size, cache_dir=spec.cache_dir
    )
