"""The vector-store contract, run against every registered store on its real engine.

The parameters come from the plugin registry: each store of the ``ragkit.stores`` group with
its default options (the test id is the store's name, so ``-k <name>`` selects one, a
third-party plugin's included), plus the option variants of :data:`VARIANTS`. A store whose
extra is not installed is skipped, or fails when ``CI`` is set: CI must run every store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag import plugins
from rag.store import StoreConfig
from vectorstores.conformance import *  # noqa: F403  (the contract's tests)
from vectorstores.conformance import StoreEnv

#: Option variants of built-in stores worth holding to the same contract:
#: ``{param id: (store, options)}``; a variant whose store is not registered is left out.
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "faiss-hnsw": ("faiss", {"index": "hnsw"}),
    # IVF trained as soon as 39 * nlist = 78 vectors are in (the suite loads 120); probing
    # both lists keeps the recall the contract asks of random vectors.
    "faiss-ivf": ("faiss", {"index": "ivf", "nlist": 2, "nprobe": 2}),
}


def _params() -> list[tuple[str, str, dict[str, object]]]:
    """``(param id, store, options)``: every registered store, then the variants."""
    names = plugins.registry().names("stores")
    params: list[tuple[str, str, dict[str, object]]] = [(name, name, {}) for name in names]
    params += [(vid, store, opts) for vid, (store, opts) in VARIANTS.items() if store in names]
    return params


PARAMS = _params()


def _embedded_postgres(root: Path) -> Callable[[], None]:
    """Start the embedded PostgreSQL for the session; returns its release."""
    from vectorstores.pgserver import acquire

    server = acquire(root)
    return server.stop


#: Servers started once per session for a store (when it is installed), so that each test's
#: close() does not release the last handle and the next test start it again:
#: ``{store: start(data_dir) -> release}``.
SESSION_SERVERS: dict[str, Callable[[Path], Callable[[], None]]] = {
    "pgvector": _embedded_postgres,
}


@pytest.fixture(scope="session")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One folder for the whole session, so that an embedded server starts once; each test
    # uses its own collection.
    return tmp_path_factory.mktemp("stores")


@pytest.fixture(scope="session")
def session_servers(store_root: Path) -> Iterator[dict[str, Callable[[], None]]]:
    """Releases of the servers started so far, by store; started on first use."""
    started: dict[str, Callable[[], None]] = {}
    try:
        yield started
    finally:
        for release in started.values():
            release()


def _missing(store: str) -> str | None:
    plugin = plugins.get("stores", store)
    missing = plugin.missing()
    if not missing:
        return None
    return f"{store}: {missing[0]} is not installed ({plugin.install_hint})"


@pytest.fixture(params=PARAMS, ids=[p[0] for p in PARAMS])
def store_env(
    request: pytest.FixtureRequest,
    store_root: Path,
    session_servers: dict[str, Callable[[], None]],
) -> StoreEnv:
    variant, store, options = request.param
    missing = _missing(store)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}, and CI must run every store")
        pytest.skip(missing)
    if store in SESSION_SERVERS and store not in session_servers:
        session_servers[store] = SESSION_SERVERS[store](store_root / store)
    return StoreEnv(store, StoreConfig(store_root / variant, options=options))
