"""The vector-store contract, run against every registered backend on its real engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vectorstores.base import StoreConfig
from vectorstores.conformance import *  # noqa: F403  (the contract's tests)
from vectorstores.conformance import StoreEnv
from vectorstores.registry import get_backend

# (param id, backend, options): each backend's default, plus index variants worth holding
# to the same contract.
VARIANTS = [
    ("faiss", "faiss", {}),
    ("faiss-hnsw", "faiss", {"index": "hnsw"}),
    # IVF trained as soon as 39 * nlist = 78 vectors are in (the suite loads 120); probing
    # both lists keeps the recall the contract asks of random vectors.
    ("faiss-ivf", "faiss", {"index": "ivf", "nlist": 2, "nprobe": 2}),
    ("chroma", "chroma", {}),
    ("qdrant", "qdrant", {}),
    ("pgvector", "pgvector", {}),
]


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One folder for the whole session, so that an embedded server (PostgreSQL) starts
    # once; each test uses its own collection.
    return tmp_path_factory.mktemp("stores")


@pytest.fixture(scope="session")
def _hold_embedded_postgres(store_root: Path) -> Iterator[None]:
    # Keep the embedded server up for the whole session; otherwise each test's close()
    # releases the last handle and the next test starts it again.
    if get_backend("pgvector").missing():
        yield
        return
    from vectorstores.pgserver import acquire

    server = acquire(store_root / "pgvector")
    try:
        yield
    finally:
        server.stop()


@pytest.fixture(params=VARIANTS, ids=[v[0] for v in VARIANTS])
def store_env(
    request: pytest.FixtureRequest, store_root: Path, _hold_embedded_postgres: None
) -> StoreEnv:
    variant, backend, options = request.param
    missing = get_backend(backend).missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{backend}: {missing[0]} is not installed, and CI must run every backend")
        pytest.skip(f"{backend}: {missing[0]} is not installed")
    return StoreEnv(backend, StoreConfig(store_root / variant, options=options))
