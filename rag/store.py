"""The vector-store contract every backend implements, and the base that checks its inputs.

A store holds one named collection of chunks and their vectors. Every backend ranks by
cosine similarity and reports it as ``Hit.score`` ("higher is better"), whatever its native
distance is; vectors reach it as float32 unit rows (:func:`rag.contract.check_vectors`).

A backend declares what it can do in ``capabilities``; asking for anything else raises
(:class:`~rag.errors.FilterError` for filter operators, :class:`~rag.errors.CapabilityError`
otherwise). Nothing is ignored silently.

Backends are plugins of the ``ragkit.stores`` entry-point group (:mod:`rag.plugins`);
:func:`open_store` constructs one by name. Most subclass :class:`StoreBase`, which applies
the checks of :mod:`rag.contract` once, in the public methods, and hands the backend
validated input through the ``_upsert``, ``_delete``, ``_search``, ``_get`` and ``_scan``
hooks. Searching many query vectors at once (``search_many``, for a server batching its
requests) is optional: :class:`StoreBase` loops over ``_search`` unless the backend
overrides ``_search_many``, and :func:`search_many` serves any store.

Choosing the index and search parameter from a recall target (``calibrate``) is optional
too: a backend that can declares ``capabilities.calibrate`` and overrides
:meth:`StoreBase.calibrate`; :func:`calibrate` serves any store and raises
:class:`~rag.errors.CapabilityError` for one that cannot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from rag import contract
from rag.errors import CapabilityError, ConfigError
from rag.filters import Filter, parse, require_supported
from rag.types import Chunk, Hit

OptionValue = str | int | float | bool
#: The largest ``k`` a search may ask for, on every store.
MAX_K = 10_000


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
    #: Whether ``calibrate`` chooses the index and search parameter from a recall target.
    calibrate: bool = False


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a store chose to reach a recall target, and the recall it measured.

    ``options`` are store options (``StoreConfig.options``) the collection saves and opens
    the store with from then on; options the user names override them. ``recall`` is the
    mean recall@``k`` of the store's search against an exact scan, measured on ``queries``
    of the collection's own vectors (each query's own vector left out); an exact index is
    not measured (``queries`` 0, ``recall`` 1.0). ``fixed`` are the options the user named,
    which the store kept and measured with rather than chose.
    """

    target: float
    options: dict[str, OptionValue]
    recall: float
    queries: int
    #: Chunks in the collection when it was measured.
    count: int
    k: int = 10
    fixed: dict[str, OptionValue] = field(default_factory=dict)
    #: Wall time of the calibration, building the chosen index included.
    seconds: float = 0.0
    #: Why this choice, in a few words ("below 50000 chunks: exact", ...).
    note: str = ""

    #: A measured choice is kept while the collection stays within this factor of the size
    #: it was measured at; an unmeasured one (exact) is cheap to check after every change.
    GROWTH: ClassVar[float] = 1.25

    def still_fits(self, target: float, count: int, fixed: Mapping[str, OptionValue]) -> bool:
        """Whether this choice still answers ``target`` for a collection of ``count`` chunks
        built with the user's options ``fixed``, so that an ingest need not calibrate again."""
        return (
            self.queries > 0
            and self.target == target
            and self.fixed == dict(fixed)
            and self.count / self.GROWTH <= count <= self.count * self.GROWTH
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


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
    dimension raises :class:`~rag.errors.DimensionMismatchError` at once. A collection name
    outside :func:`rag.contract.check_collection_name`'s rule raises
    :class:`~rag.errors.ConfigError` before anything is opened or created.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: One line for ``rag stores``.
    description: ClassVar[str]
    collection: str
    dim: int

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Insert or replace chunks by id, with one vector row per chunk. Idempotent.

        Chunks follow :mod:`rag.contract` (unique non-empty ids, metadata by the rule);
        ``None`` metadata values are not stored."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Remove chunks by id; ids that are not there are ignored."""
        ...

    def search(self, vector: np.ndarray, *, k: int = 10, where: Filter | None = None) -> list[Hit]:
        """The ``k`` (1 to :data:`MAX_K`) nearest chunks that match ``where``, best first.

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


class StoreBase:
    """The contract's public methods, checking their input once for every backend.

    A backend sets ``name``, ``capabilities``, ``description``, ``collection`` and ``dim``
    (``collection`` first: setting it checks the name) and implements the hooks, which receive only validated input: ``_upsert`` a non-empty
    list of checked chunks and a float32 ``(n, dim)`` array of unit rows; ``_delete`` and
    ``_get`` a non-empty list of ids; ``_search`` a unit ``(dim,)`` vector, ``k`` within
    bounds and a parsed filter whose operators the backend declared; ``_scan`` a positive
    batch size. ``_search_many`` (optional: by default one ``_search`` per row) gets a
    non-empty float32 ``(n, dim)`` array of unit rows and must answer each row exactly as
    ``_search`` would.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    description: ClassVar[str] = ""
    dim: int

    @property
    def collection(self) -> str:
        """The collection's name; assigning it checks it by the rule of
        :func:`rag.contract.check_collection_name`, so a backend that sets it first, as the
        built-in ones do, never turns a name such as ``../x`` into a path."""
        return self._collection_name

    @collection.setter
    def collection(self, name: str) -> None:
        self._collection_name = contract.check_collection_name(name)

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        chunks = list(chunks)
        vecs = contract.check_vectors(
            vectors, self.dim, rows=len(chunks), store=self.name, collection=self.collection
        )
        if chunks:
            self._upsert(contract.check_chunks(chunks), vecs)

    def delete(self, ids: Sequence[str]) -> None:
        ids = contract.check_ids(ids)
        if ids:
            self._delete(ids)

    def search(
        self, vector: np.ndarray, *, k: int = 10, where: Filter | Mapping[str, Any] | None = None
    ) -> list[Hit]:
        k = contract.check_k(k, limit=MAX_K)
        q = contract.check_query(vector, self.dim, store=self.name, collection=self.collection)
        flt = parse(where)
        require_supported(flt, self.capabilities.filter_ops, self.name)
        return self._search(q, k, flt)

    def search_many(
        self, vectors: np.ndarray, *, k: int = 10, where: Filter | Mapping[str, Any] | None = None
    ) -> list[list[Hit]]:
        """One :meth:`search` per row of ``vectors`` (an ``(n, dim)`` array), all with the
        same ``k`` and ``where``: the same hits as ``[search(v, k=k, where=where) for v in
        vectors]``, ids and scores alike, in one call where the backend batches
        (``_search_many``). Optional in the contract: :func:`search_many` falls back to a
        loop over ``search`` for a store without it."""
        k = contract.check_k(k, limit=MAX_K)
        qs = contract.check_vectors(
            vectors, self.dim, rows=None, store=self.name, collection=self.collection
        )
        flt = parse(where)
        require_supported(flt, self.capabilities.filter_ops, self.name)
        if not len(qs):
            return []
        return self._search_many(qs, k, flt)

    def get(self, ids: Sequence[str]) -> list[Chunk]:
        ids = contract.check_ids(ids)
        return self._get(ids) if ids else []

    def calibrate(
        self, target: float, *, fixed: Mapping[str, OptionValue] | None = None
    ) -> Calibration:
        """Choose, and switch to, the index and search parameter that reach recall@10
        ``target`` (in (0, 1]) on this collection, measured on its own vectors; ``fixed``
        are options the user named, kept as they are. Optional in the contract: a backend
        that implements it declares ``capabilities.calibrate``; this default refuses."""
        raise CapabilityError(
            f"the {self.name} store cannot choose its index from a recall target; set its "
            "index options with --store-opt instead"
        )

    def scan(self, *, batch_size: int = 1000) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        return self._scan(contract.check_k(batch_size, name="batch_size"))

    # --- the backend's part --------------------------------------------------------------

    def _upsert(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _delete(self, ids: list[str]) -> None:
        raise NotImplementedError

    def _search(self, vector: np.ndarray, k: int, where: Filter | None) -> list[Hit]:
        raise NotImplementedError

    def _search_many(self, vectors: np.ndarray, k: int, where: Filter | None) -> list[list[Hit]]:
        # A backend that can search a matrix at once overrides this; it must return what
        # _search returns for each row.
        return [self._search(v, k, where) for v in vectors]

    def _get(self, ids: list[str]) -> list[Chunk]:
        raise NotImplementedError

    def _scan(self, batch_size: int) -> Iterator[tuple[list[Chunk], np.ndarray]]:
        raise NotImplementedError


def open_store(
    name: str, collection: str, *, dim: int, config: StoreConfig, create: bool = True
) -> VectorStore:
    """Collection ``collection`` in the store plugin ``name`` (see :mod:`rag.plugins`)."""
    from rag import plugins

    cls = plugins.load("stores", name)
    return cls(collection, dim=dim, config=config, create=create)


def search_many(
    store: VectorStore,
    vectors: np.ndarray,
    *,
    k: int = 10,
    where: Filter | Mapping[str, Any] | None = None,
) -> list[list[Hit]]:
    """The hits of each row of ``vectors``, as ``store.search`` gives them: through the
    store's ``search_many`` when it has one (every :class:`StoreBase` does), else one
    ``search`` per row."""
    batch = getattr(store, "search_many", None)
    if batch is not None:
        return batch(vectors, k=k, where=where)
    return [store.search(v, k=k, where=where) for v in np.asarray(vectors)]


def calibrate(
    store: VectorStore, target: float, *, fixed: Mapping[str, OptionValue] | None = None
) -> Calibration:
    """``store.calibrate(target, fixed=fixed)`` (see :meth:`StoreBase.calibrate`), for a
    store that declares ``capabilities.calibrate``; :class:`CapabilityError` otherwise."""
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"a recall target is between 0 and 1 (1 = exact), not {target}")
    method = getattr(store, "calibrate", None)
    if not store.capabilities.calibrate or method is None:
        raise CapabilityError(
            f"the {store.name} store cannot choose its index from a recall target; set its "
            "index options with --store-opt instead"
        )
    return method(target, fixed=dict(fixed or {}))


def store_class(name: str) -> type[VectorStore]:
    """The class of the store plugin ``name``, importing its module (not its driver)."""
    from rag import plugins

    return plugins.load("stores", name)


def folder_writable(path: Path) -> bool:
    """Whether this process may create and change files in ``path``, or in the nearest
    folder above it that exists: false on a read-only mount, or without write permission."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


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
