"""The vector-store contract, run against every registered store on its real engine.

The parameters come from the plugin registry: each store of the ``ragkit.stores`` group with
its default options (the test id is the store's name, so ``-k <name>`` selects one, a
third-party plugin's included), plus the option variants of :data:`VARIANTS`. A store whose
extra is not installed is skipped, or fails when ``CI`` is set: CI must run every store.

Below the suite: the built-in stores on a read-only folder (FAISS answers searches and
refuses writes; the engines that must write to read say so with a StoreError).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rag import plugins
from rag.filters import evaluate, parse
from rag.store import StoreConfig, search_many
from tests.store_support import (
    SESSION_SERVERS,  # noqa: F401  (tests/test_fuzz_filters.py uses it)
    URL_SERVERS,
)
from tests.store_support import missing as _missing
from vectorstores.conformance import *  # noqa: F403  (the contract's tests)
from vectorstores.conformance import DIM, StoreEnv, dataset
from vectorstores.conformance_guards import *  # noqa: F403  (the contract on hostile input)

#: Option variants of built-in stores worth holding to the same contract:
#: ``{param id: (store, options)}``; a variant whose store is not registered is left out.
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "faiss-hnsw": ("faiss", {"index": "hnsw"}),
    # IVF trained as soon as 39 * nlist = 78 vectors are in (the suite loads 120); probing
    # both lists keeps the recall the contract asks of random vectors.
    "faiss-ivf": ("faiss", {"index": "ivf", "nlist": 2, "nprobe": 2}),
}


def _params() -> list[tuple[str, str, dict[str, object]]]:
    """``(param id, store, options)``: every registered store, then the variants, then the
    stores on a server reached by URL (:data:`tests.store_support.URL_SERVERS`)."""
    names = plugins.registry().names("stores")
    params: list[tuple[str, str, dict[str, object]]] = [(name, name, {}) for name in names]
    params += [(vid, store, opts) for vid, (store, opts) in VARIANTS.items() if store in names]
    params += [(vid, store, {}) for vid, (store, _) in URL_SERVERS.items() if store in names]
    return params


PARAMS = _params()
#: The fixtures store_root and session_servers, shared with the other modules that use them.
pytest_plugins = ["tests.store_support"]


@pytest.fixture(params=PARAMS, ids=[p[0] for p in PARAMS])
def store_env(
    request: pytest.FixtureRequest,
    store_root: Path,
    store_ready: Callable[[str], Path],
    store_url: Callable[[str], str],
) -> StoreEnv:
    variant, store, options = request.param
    url = None
    if variant in URL_SERVERS:
        url = store_url(variant)
    else:
        store_ready(store)
    return StoreEnv(store, StoreConfig(store_root / variant, url=url, options=options))


# --- batch search ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", [None, {"tag": "a"}, {"n": {"$gte": 10}}, {"tag": "nope"}], ids=json.dumps
)
def test_search_many_is_search_per_row(store_env: StoreEnv, where: dict | None) -> None:
    """A batch of queries (``rag.store.search_many``: the store's own ``search_many``, or a
    loop over ``search`` for a store without one) answers each row exactly as ``search``
    does, ids and scores alike, with and without a filter."""
    chunks, vecs = dataset()
    store = store_env.open()
    try:
        store.upsert(chunks, vecs)
        rng = np.random.default_rng(5)
        queries = rng.normal(size=(12, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for k in (5, 500):
            one_by_one = [
                [(h.id, h.score) for h in store.search(q, k=k, where=where)] for q in queries
            ]
            batched = search_many(store, queries, k=k, where=where)
            assert [[(h.id, h.score) for h in hits] for hits in batched] == one_by_one
        assert search_many(store, queries[:0], k=5) == []
    finally:
        store.close()


# --- a read-only folder ----------------------------------------------------------------------

_READ_ONLY_CHILD = """
import json, os, sys
import numpy as np
from pathlib import Path
args = json.loads(sys.argv[1])
if args["simulate"]:  # root without mount rights: the folder only looks read-only
    real_access, ro = os.access, os.path.realpath(args["root"])
    def access(path, mode, *a, **kw):
        if mode & os.W_OK and os.path.realpath(path).startswith(ro):
            return False
        return real_access(path, mode, *a, **kw)
    os.access = access
from rag.errors import StoreError
from rag.store import StoreConfig, store_class
from rag.types import Chunk
config = StoreConfig(Path(args["data_dir"]), options=args["options"])
out = {}
try:
    store = store_class(args["backend"])(args["collection"], dim=args["dim"], config=config, create=False)
except StoreError as e:
    print(json.dumps({"open": f"StoreError: {e}"}))
    sys.exit(0)
q = np.array(args["query"], dtype=np.float32)
out["hits"] = [h.id for h in store.search(q, k=50, where=args["where"])]
out["count"] = store.count()
out["get"] = [c.id for c in store.get(args["ids"])]
out["writes"] = []
for write in (
    lambda: store.upsert([Chunk(args["ids"][0], "changed", {})], q.reshape(1, -1)),
    lambda: store.delete(args["ids"]),
    store.drop,
):
    try:
        write()
        out["writes"].append("done")
    except StoreError as e:
        out["writes"].append(f"StoreError: {e}")
store.close()
out["count_after"] = store_class(args["backend"])(
    args["collection"], dim=args["dim"], config=config, create=False
).count()
print(json.dumps(out))
"""


def read_only_mode() -> str:
    """How a test shows a folder read-only here: ``mount`` (a read-only bind mount in a
    private mount namespace, for root with the rights), ``chmod`` (``chmod -R a-w``, which
    stops anyone but root) or ``simulate`` (root without mount rights: ``os.access`` in the
    child says "not writable", and what the store opens read-only is read-only for real)."""
    if os.geteuid() != 0:
        return "chmod"
    unshare = shutil.which("unshare")
    if unshare:
        probe = subprocess.run(
            [unshare, "-m", "--propagation", "private", "sh", "-c", "mount --bind /tmp /tmp"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return "mount"
    return "simulate"


def run_read_only(folder: Path, args: dict) -> dict:
    """Run :data:`_READ_ONLY_CHILD` with ``args`` on ``folder`` made read-only."""
    mode = read_only_mode()
    args = {**args, "root": str(folder), "simulate": mode == "simulate"}
    cmd = [sys.executable, "-c", _READ_ONLY_CHILD, json.dumps(args)]
    if mode == "mount":
        d = str(folder)
        script = f'mount --bind "{d}" "{d}" && mount -o remount,bind,ro "{d}" && exec "$@"'
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
    elif mode == "chmod":
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        if mode == "chmod":
            subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: What each built-in store does on a read-only folder: "reads" (searches work, writes are
#: StoreErrors) or "refuses" (opening is a StoreError that says the folder is read-only).
READ_ONLY: dict[str, tuple[str, dict[str, object]]] = {
    "faiss": ("reads", {}),
    "faiss-hnsw": ("reads", {"index": "hnsw"}),
    "chroma": ("refuses", {}),
    "qdrant": ("refuses", {}),
    "qdrant-local": ("refuses", {"engine": "local"}),
    "pgvector": ("refuses", {}),
}


@pytest.mark.parametrize("variant", list(READ_ONLY))
def test_read_only_folder(variant: str, tmp_path: Path) -> None:
    expect, options = READ_ONLY[variant]
    backend = variant.split("-")[0]
    missing = _missing(backend)
    if missing:
        pytest.skip(missing)
    folder = tmp_path / variant
    env = StoreEnv(backend, StoreConfig(folder, options=options))
    chunks, vecs = dataset(n=30)
    store = env.open()
    name = store.collection
    store.upsert(chunks, vecs)
    store.close()
    where = {"n": {"$gte": 10}, "tag": {"$ne": "b"}}
    expected = [c.id for c in chunks if evaluate(parse(where), c.metadata)]
    args = {
        "backend": backend,
        "collection": name,
        "dim": DIM,
        "data_dir": str(folder),
        "options": options,
        "query": vecs[3].tolist(),
        "where": where,
        "ids": [chunks[0].id, chunks[1].id],
    }
    out = run_read_only(folder, args)
    if expect == "refuses":
        assert out["open"].startswith("StoreError") and "read-only" in out["open"], out
    else:
        assert "open" not in out, out
        assert sorted(out["hits"]) == sorted(expected)
        assert out["count"] == out["count_after"] == len(chunks)
        assert out["get"] == args["ids"]
        assert len(out["writes"]) == 3
        assert all(w.startswith("StoreError") and "read-only" in w for w in out["writes"]), out
    # Nothing changed, and the folder still works once writable.
    again = env.open(name, create=False)
    try:
        assert again.count() == len(chunks)
    finally:
        again.close()


def test_faiss_read_only_sees_an_open_writer(tmp_path: Path) -> None:
    """While a writer holds the collection (its WAL not yet merged), a reader on a
    read-only view of the folder sees what the writer committed."""
    if _missing("faiss"):
        pytest.skip("faiss is not installed")
    env = StoreEnv("faiss", StoreConfig(tmp_path))
    chunks, vecs = dataset(n=12)
    writer = env.open()
    try:
        writer.upsert(chunks, vecs)
        assert (tmp_path / writer.collection / "chunks.sqlite-wal").exists()
        args = {
            "backend": "faiss",
            "collection": writer.collection,
            "dim": DIM,
            "data_dir": str(tmp_path),
            "options": {},
            "query": vecs[0].tolist(),
            "where": {"even": True},
            "ids": [chunks[0].id, chunks[1].id],
        }
        out = run_read_only(tmp_path, args)
    finally:
        writer.close()
    assert sorted(out["hits"]) == sorted(c.id for c in chunks if c.metadata["even"])
    assert out["count"] == len(chunks)
