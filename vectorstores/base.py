"""The vector-store contract every backend implements.

A store holds one named collection of chunks and their vectors. Vectors are float32 and
L2-normalised by the embedder, so every backend ranks by cosine similarity and reports it
as ``Hit.score`` ("higher is better"), whatever its native distance is.

A backend declares what it can do in ``capabilities``; asking for anything else raises
(:class:`~rag.errors.FilterError` for filter operators, :class:`~rag.errors.CapabilityError`
otherwise). Nothing is ignored silently.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from rag.errors import ConfigError, DimensionMismatchError
from rag.filters import Filter
from rag.types import Chunk, Hit

OptionValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do, declared up front."""

    #: Filter operators (``$eq``, ``$and``, ...) its translator can express.
    filter_ops: frozenset[str]
    #: Whether the default search is exact (a full scan) rather than approximate.
    exact_search: bool
    #: Whether data outlives the process.
    persistent: bool = True
    #: The largest number of records one write may carry, if the engine has a limit.
    max_batch_size: int | None = None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where and how a backend keeps its data.

    ``data_dir`` is the backend's own folder under the ragkit data directory (embedded
    engines keep their files there); ``url`` points at a server instead (a Chroma or Qdrant
    URL, a PostgreSQL DSN). ``options`` are backend-specific settings, validated by the
    backend: an unknown key is a :class:`~rag.errors.ConfigError`. Secrets never travel
    here; backends read them from the environment.
    """

    data_dir: Path
    url: str | None = None
    options: Mapping[str, OptionValue] = field(default_factory=dict)


@runtime_checkable
class VectorStore(Protocol):
    """One collection in one backend.

    Constructed as ``Backend(collection, dim=..., config=StoreConfig(...), create=True)``:
    opens the collection, creating it when ``create`` is true and it does not exist (else
    :class:`~rag.errors.CollectionNotFoundError`). An existing collection of another
    dimension raises :class:`~rag.errors.DimensionMismatchError` at once.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    collection: str
    dim: int

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Insert or replace chunks by id, with one vector row per chunk. Idempotent."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Remove chunks by id; ids that are not there are ignored."""
        ...

    def search(self, vector: np.ndarray, *, k: int = 10, where: Filter | None = None) -> list[Hit]:
        """The ``k`` nearest chunks that match ``where``, best first.

        Filtering happens before ranking: the result has ``min(k, matching)`` hits.
        """
        ...

    def get(self, ids: Sequence[str]) -> list[Chunk]:
        """Chunks by id, in the order asked; missing ids are left out."""
        ...

    def count(self) -> int:
        """The number of chunks in the collection."""
        ...

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        ...

    def scan(self, *, batch_size: int = 1000) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        """Every chunk with its vector, in batches (for migration and verification)."""
        ...

    def close(self) -> None:
        """Release files, connections and servers. The object is unusable afterwards."""
        ...


# --- helpers shared by backends ------------------------------------------------------------


def check_vectors(
    vectors: np.ndarray, dim: int, *, rows: int | None, backend: str, collection: str
) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (rows, dim) array, or a clear error."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        got = arr.shape[-1] if arr.ndim else 0
        raise DimensionMismatchError(
            f"{backend} collection {collection!r} holds {dim}-dimensional vectors, got {got}; "
            "re-ingest into a new collection or use the embedder that built this one"
        )
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{rows} chunks but {arr.shape[0]} vectors")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinity")
    return np.ascontiguousarray(arr)


def check_query(vector: np.ndarray, dim: int, *, backend: str, collection: str) -> np.ndarray:
    """A single query vector as float32 of shape (dim,)."""
    arr = check_vectors(vector, dim, rows=1, backend=backend, collection=collection)
    return arr[0]


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return k


def check_unique_ids(chunks: Sequence[Chunk]) -> None:
    seen: set[str] = set()
    for chunk in chunks:
        if chunk.id in seen:
            raise ValueError(f"chunk id {chunk.id!r} appears twice in one upsert")
        seen.add(chunk.id)


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_options(
    options: Mapping[str, OptionValue],
    defaults: Mapping[str, OptionValue],
    *,
    backend: str,
) -> dict[str, OptionValue]:
    """Merge ``options`` over ``defaults``, coercing strings from the command line to the
    defaults' types; unknown keys are a :class:`ConfigError`."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ConfigError(
            f"unknown option(s) for the {backend} store: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(defaults)) or 'none'}"
        )
    out = dict(defaults)
    for key, value in options.items():
        kind = type(defaults[key])
        if isinstance(value, str) and kind is not str:
            try:
                if kind is bool:
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("1", "true", "yes")
                else:
                    value = kind(value)
            except ValueError as e:
                raise ConfigError(
                    f"{backend} option {key}={value!r} is not a {kind.__name__}"
                ) from e
        out[key] = value
    return out
