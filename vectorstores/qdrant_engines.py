"""The engines behind :class:`vectorstores.qdrant.QdrantStore`: one small interface over
qdrant-edge (:class:`EdgeEngine`) and qdrant-client (:class:`ClientEngine`, for local mode
and servers). They take point ids, vectors and payloads already prepared by the store and
return raw ``(id, score, payload)`` tuples; errors are wrapped by the store.

The thresholds below are module attributes so that tests can shrink them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import CollectionNotFoundError, ConfigError, DimensionMismatchError
from vectorstores.qdrant_filters import (
    STANDARD_INDEXES,
    ClientBuilder,
    EdgeBuilder,
    field_of_path,
    key_path,
)

log = logging.getLogger("vectorstores.qdrant")

#: Vector bytes written since the last HNSW build that trigger the next one (edge): 30 MiB,
#: 20,480 vectors of 384 dimensions, whose exact scan takes about 2 ms...
AUTO_OPTIMIZE_BYTES = 30 * 2**20
#: ...or, once the collection is larger, this fraction of the vectors the last build covered.
#: Each build merges the new points into one segment (copying every vector and mapping the
#: new segment's files), so builds at a fixed step make a bulk load quadratic; growing the
#: step with the collection keeps it close to one build at the end, while searches during
#: the load scan at most a third of the points exactly.
AUTO_OPTIMIZE_GROWTH = 0.5
#: Segments holding more vector data than this get HNSW (Qdrant's default, in KB).
INDEXING_THRESHOLD_KB = 10_000
#: Filters expected to match less vector data than this are answered by an exact scan of the
#: matching points through the payload index (Qdrant's default, in KB).
FULL_SCAN_THRESHOLD_KB = 10_000
#: The size past which qdrant-client advises against its local mode.
LOCAL_MODE_ADVISED_MAX = 20_000

# Qdrant's HNSW defaults, for collections made before ragkit recorded its own.
_QDRANT_M, _QDRANT_EF_CONSTRUCT = 16, 100


@dataclass(frozen=True, slots=True)
class Spec:
    """What an engine needs to know about the collection it opens."""

    collection: str
    dim: int
    engine: str  # edge | local | server
    path: Path | None  # the collection's folder (edge, local)
    url: str | None
    create: bool
    hnsw_m: int
    ef_construction: int
    ef_search: int  # 0: Qdrant's default (ef_construction)
    exact: bool
    explicit: frozenset[str]  # the options the user set

    def where(self) -> str:
        return f"the server at {self.url}" if self.path is None else str(self.path.parent)

    def not_found(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(
            f"qdrant collection {self.collection!r} does not exist in {self.where()}"
        )

    def dimension_error(self, stored: int) -> DimensionMismatchError:
        return DimensionMismatchError(
            f"qdrant collection {self.collection!r} holds {stored}-dimensional vectors, not {self.dim}; "
            "use the embedder that built it, or ingest into a new collection"
        )

    def check_hnsw(self, m: Any, ef_construct: Any) -> None:
        """Build options given for an existing collection must match how it was built."""
        for option, mine, stored in (
            ("hnsw_m", self.hnsw_m, m),
            ("ef_construction", self.ef_construction, ef_construct),
        ):
            if option in self.explicit and stored is not None and int(stored) != mine:
                raise ConfigError(
                    f"qdrant collection {self.collection!r} was built with {option}={stored}; "
                    "leave the option out, or drop the collection and ingest again"
                )

    def exists_on_disk(self) -> bool:
        """Whether the collection's folder holds this engine's data; raise if another's."""
        assert self.path is not None
        if (self.path / "edge_config.json").exists() or (self.path / "segments").exists():
            found = "edge"
        elif (self.path / "meta.json").exists():
            found = "local"
        else:
            return False
        if found != self.engine:
            raise ConfigError(
                f"qdrant collection {self.collection!r} in {self.path.parent} was built with "
                f"engine={found}; open it with engine={found}, or drop it first"
            )
        return True


def _schema_name(data_type: Any) -> str:
    """``keyword``/``float``/... from either API's payload schema enum."""
    return str(getattr(data_type, "name", data_type)).rsplit(".", 1)[-1].lower()


def _indexed(payload_schema: Any) -> dict[str, str]:
    """``{payload key: index type}`` from either API's payload schema, keyed by path."""
    return {
        field_of_path(str(path)): _schema_name(info.data_type)
        for path, info in (payload_schema or {}).items()
    }


class EdgeEngine:
    """An EdgeShard in ``data_dir/<collection>``."""

    supports_indexes = True

    def __init__(self, spec: Spec) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.spec = spec
        self.builder = EdgeBuilder(qe)
        ef = spec.ef_search or None
        self._params = qe.SearchParams(hnsw_ef=ef, exact=spec.exact)
        # Filtered HNSW with ACORN: see the store's docstring.
        self._filtered_params = qe.SearchParams(
            hnsw_ef=ef, exact=spec.exact, acorn=qe.AcornSearchParams(enable=True)
        )
        self._exact_params = qe.SearchParams(hnsw_ef=ef, exact=True)
        self._written = 0  # points written since the last optimize()
        self._built = 0  # points the last optimize() left in the collection
        self._dirty = False
        path = spec.path
        assert path is not None
        if spec.exists_on_disk():
            stored = _edge_config(path)
            size = stored.get("vectors", {}).get("", {}).get("size")
            if size is not None and int(size) != spec.dim:
                raise spec.dimension_error(int(size))
            hnsw = stored.get("hnsw_config") or {}
            spec.check_hnsw(
                hnsw.get("m", _QDRANT_M), hnsw.get("ef_construct", _QDRANT_EF_CONSTRUCT)
            )
            self.shard = qe.EdgeShard.load(str(path))
            self._built = int(self.shard.info().points_count or 0)
            self.indexed = _indexed(self.shard.info().payload_schema)
            return
        if not spec.create:
            raise spec.not_found()
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=spec.dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=spec.hnsw_m,
                ef_construct=spec.ef_construction,
                full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB),
        )
        path.mkdir(parents=True, exist_ok=True)
        self.shard = qe.EdgeShard.create(str(path), config)
        self.indexed = {}
        try:
            for field, schema in STANDARD_INDEXES.items():
                self.create_index(field, schema)
                self.indexed[field] = schema
        except BaseException:
            self.shard.close()
            raise

    def create_index(self, field: str, schema: str) -> None:
        # Without payload-aware HNSW links (enable_hnsw=False): see the store's docstring.
        qe = self._qe
        params = {
            "keyword": qe.KeywordIndexParams,
            "float": qe.FloatIndexParams,
            "bool": qe.BoolIndexParams,
        }
        self.shard.update(
            qe.UpdateOperation.create_field_index(
                key_path(field), params[schema](enable_hnsw=False)
            )
        )

    def upsert(self, ids: list[str], vecs: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        qe = self._qe
        points = [qe.Point(i, v, p) for i, v, p in zip(ids, vecs.tolist(), payloads, strict=True)]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def after_write(self, n: int) -> None:
        self._dirty = True
        self._written += n
        step = max(AUTO_OPTIMIZE_BYTES, AUTO_OPTIMIZE_GROWTH * self._built * self.spec.dim * 4)
        if self._written * self.spec.dim * 4 >= step:
            self.optimize()

    def delete(self, ids: list[str]) -> None:
        self.shard.update(self._qe.UpdateOperation.delete_points(ids))

    def query(
        self, q: np.ndarray, k: int, native: Any, *, exact: bool = False
    ) -> list[tuple[Any, float, Any]]:
        qe = self._qe
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(q.tolist()),
            filter=native,
            with_payload=True,
            with_vector=False,
            params=self._exact_params
            if exact
            else self._params
            if native is None
            else self._filtered_params,
        )
        return [(p.id, p.score, p.payload) for p in self.shard.query(request)]

    def retrieve(self, ids: list[str]) -> list[tuple[Any, Any]]:
        return [(r.id, r.payload) for r in self.shard.retrieve(ids, True, False)]

    def count(self, native: Any = None) -> int:
        return self.shard.count(self._qe.CountRequest(exact=True, filter=native))

    def scroll(
        self, offset: Any, limit: int, native: Any = None
    ) -> tuple[list[tuple[Any, Any, Any]], Any]:
        request = self._qe.ScrollRequest(
            offset=offset, limit=limit, filter=native, with_payload=True, with_vector=True
        )
        records, nxt = self.shard.scroll(request)
        return [(r.id, r.payload, r.vector) for r in records], nxt

    def optimize(self) -> bool:
        start = time.perf_counter()
        changed = bool(self.shard.optimize())
        self._written = 0
        info = self.shard.info()
        self._built = int(info.points_count or 0)
        if changed:
            log.info(
                "qdrant collection %r: HNSW covers %d of %d points after %.1f s of indexing",
                self.spec.collection,
                info.indexed_vectors_count,
                info.points_count,
                time.perf_counter() - start,
            )
        return changed

    def close(self) -> None:
        try:
            if self._dirty:
                self.optimize()
            self.shard.flush()
        finally:
            self.shard.close()

    def drop(self) -> None:
        self.shard.close()
        assert self.spec.path is not None
        shutil.rmtree(self.spec.path, ignore_errors=True)


def _edge_config(path: Path) -> dict[str, Any]:
    """The shard's persisted configuration (its dimension and HNSW settings)."""
    try:
        return json.loads((path / "edge_config.json").read_text())
    except (OSError, ValueError):
        return {}


class ClientEngine:
    """qdrant-client: a server, or local mode in ``data_dir/<collection>``."""

    def __init__(self, spec: Spec, client: Any) -> None:
        from qdrant_client import models

        self._m = models
        self.spec = spec
        self._client = client
        self._name = spec.collection
        self.local = spec.engine == "local"
        self.supports_indexes = not self.local  # local mode ignores payload indexes, and says so
        self.builder = ClientBuilder(models)
        ef = spec.ef_search or None
        # Local mode is exact anyway, and warns about any search parameters.
        self._params = None if self.local else models.SearchParams(hnsw_ef=ef, exact=spec.exact)
        self._exact_params = None if self.local else models.SearchParams(hnsw_ef=ef, exact=True)
        self._estimate = 0  # points, for local mode's size warning
        self._warned = False
        try:
            self._open()
        except BaseException:
            client.close()
            raise

    @classmethod
    def local_mode(cls, spec: Spec) -> ClientEngine:
        from qdrant_client import QdrantClient

        assert spec.path is not None
        if not spec.exists_on_disk() and not spec.create:
            raise spec.not_found()  # before QdrantClient(path=) makes the folder
        # The store's lock serialises calls from several threads (Streamlit, the indexer).
        client = QdrantClient(path=str(spec.path), force_disable_check_same_thread=True)
        return cls(spec, client)

    def _open(self) -> None:
        m, client, spec = self._m, self._client, self.spec
        if client.collection_exists(self._name):
            info = client.get_collection(self._name)
            vectors = info.config.params.vectors
            if not isinstance(vectors, m.VectorParams) or vectors.distance != m.Distance.COSINE:
                raise ConfigError(
                    f"qdrant collection {self._name!r} was not made by ragkit: it needs one unnamed "
                    "vector with cosine distance"
                )
            if vectors.size != spec.dim:
                raise spec.dimension_error(vectors.size)
            if not self.local:
                spec.check_hnsw(info.config.hnsw_config.m, info.config.hnsw_config.ef_construct)
            self.indexed = _indexed(info.payload_schema)
            if self.local:
                self._estimate = int(info.points_count or 0)
                self._warn_size()
            return
        if not spec.create:
            raise spec.not_found()
        client.create_collection(
            self._name,
            vectors_config=m.VectorParams(size=spec.dim, distance=m.Distance.COSINE),
            hnsw_config=None
            if self.local
            else m.HnswConfigDiff(m=spec.hnsw_m, ef_construct=spec.ef_construction),
        )
        self.indexed = {}
        if self.supports_indexes:
            for field, schema in STANDARD_INDEXES.items():
                self.create_index(field, schema)
                self.indexed[field] = schema

    def _warn_size(self) -> None:
        if self._warned or self._estimate <= LOCAL_MODE_ADVISED_MAX:
            return
        self._estimate = self.count()
        if self._estimate > LOCAL_MODE_ADVISED_MAX:
            self._warned = True
            log.warning(
                "qdrant collection %r holds %d points: local mode scans them all in Python for "
                "every query and loads them all on open. Use the default engine (edge) past %d points.",
                self._name,
                self._estimate,
                LOCAL_MODE_ADVISED_MAX,
            )

    def create_index(self, field: str, schema: str) -> None:
        m = self._m
        params = {
            "keyword": m.KeywordIndexParams,
            "float": m.FloatIndexParams,
            "bool": m.BoolIndexParams,
        }
        self._client.create_payload_index(
            self._name,
            field_name=key_path(field),
            field_schema=params[schema](type=schema, enable_hnsw=False),
            wait=True,
        )

    def upsert(self, ids: list[str], vecs: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        batch = self._m.Batch(ids=ids, vectors=vecs.tolist(), payloads=payloads)
        self._client.upsert(self._name, points=batch, wait=True)

    def after_write(self, n: int) -> None:
        if self.local and n:
            self._estimate += n
            self._warn_size()

    def delete(self, ids: list[str]) -> None:
        self._client.delete(self._name, points_selector=self._m.PointIdsList(points=ids), wait=True)

    def query(
        self, q: np.ndarray, k: int, native: Any, *, exact: bool = False
    ) -> list[tuple[Any, float, Any]]:
        res = self._client.query_points(
            self._name,
            query=q.tolist(),
            limit=k,
            query_filter=native,
            with_payload=True,
            with_vectors=False,
            search_params=self._exact_params if exact else self._params,
        )
        return [(p.id, p.score, p.payload) for p in res.points]

    def retrieve(self, ids: list[str]) -> list[tuple[Any, Any]]:
        records = self._client.retrieve(self._name, ids=ids, with_payload=True, with_vectors=False)
        return [(r.id, r.payload) for r in records]

    def count(self, native: Any = None) -> int:
        return self._client.count(self._name, count_filter=native, exact=True).count

    def scroll(
        self, offset: Any, limit: int, native: Any = None
    ) -> tuple[list[tuple[Any, Any, Any]], Any]:
        records, nxt = self._client.scroll(
            self._name,
            scroll_filter=native,
            limit=limit,
            offset=offset,
            with_payload=True,
            with_vectors=True,
        )
        return [(r.id, r.payload, r.vector) for r in records], nxt

    def optimize(self) -> bool:
        return False  # a server optimizes in the background; local mode has no index

    def close(self) -> None:
        self._client.close()

    def drop(self) -> None:
        try:
            self._client.delete_collection(self._name)
        finally:
            self._client.close()
        if self.local and self.spec.path is not None:
            shutil.rmtree(self.spec.path, ignore_errors=True)
