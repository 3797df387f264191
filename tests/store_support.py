"""Real store engines for tests: the session's store folder, the servers some stores need
(the embedded PostgreSQL for pgvector) started once per session, and the check that a
store's extra is installed (skipped where it is not, a failure when ``CI`` is set); and the
sample corpus ingested into a collection.

A test module loads it as a plugin (``pytest_plugins = ["tests.store_support"]``, so that
every module shares one definition of each fixture, and one server) and asks for
``store_ready``, a function that readies a store by name and returns its folder, before
opening the store there. It has no assertions of its own (PYTEST_DONT_REWRITE), so a module
may also import it directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rag import Collection, Settings, open_collection, plugins


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


def missing(store: str) -> str | None:
    """Why ``store`` cannot run here (its extra is not installed), or ``None``."""
    plugin = plugins.get("stores", store)
    absent = plugin.missing()
    if not absent:
        return None
    return f"{store}: {absent[0]} is not installed ({plugin.install_hint})"


@pytest.fixture
def store_ready(
    store_root: Path, session_servers: dict[str, Callable[[], None]]
) -> Callable[[str], Path]:
    """``ready(store)``: skips the test when ``store`` is not installed (fails in CI, which
    must run every store), starts its session server on first use, and returns the folder
    its server keeps (``store_root / store``)."""

    def ready(store: str) -> Path:
        why = missing(store)
        if why:
            if os.environ.get("CI"):
                pytest.fail(f"{why}, and CI must run every store")
            pytest.skip(why)
        if store in SESSION_SERVERS and store not in session_servers:
            session_servers[store] = SESSION_SERVERS[store](store_root / store)
        return store_root / store

    return ready


@pytest.fixture
def data_dir(tmp_path: Path, store_root: Path) -> Path:
    """A fresh ragkit data directory whose stores live in the session's store folder (its
    ``stores`` is a link there), so that a collection or a store opened through it is
    served by the session's servers rather than starting its own."""
    folder = tmp_path / "rag"
    folder.mkdir()
    (folder / "stores").symlink_to(store_root, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def sample_collection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    """data/ (the sample corpus) ingested into a FAISS collection with the hashing embedder,
    as `rag ingest data` does."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("rag"),
        collection="docs",
        embed_model="hashing-384",
        embed_backend="hashing",
    )
    data = Path(__file__).resolve().parent.parent / "data"
    with open_collection(settings, create=True) as col:
        col.ingest([data])
        yield col
