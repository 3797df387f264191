"""``rag ingest --engine ray`` on a local Ray cluster of two nodes (one CPU each), into
pgvector over TCP: the collection equals a single-process ingest's, a second run ships
nothing, changes are handled, and a killed embedding actor or a killed driver (then a
re-run) end equal to a clean ingest; the resource options reach Ray.

One cluster for the module (starting one takes seconds); the tests are few on purpose.
Everything listens on 127.0.0.1 (Ray's "cluster on this host only" mode, set below).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

# Before Ray is imported: its nodes and this driver stay on loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rag import Settings, open_collection
from rag.indexing import Progress

pytest_plugins = ["tests.store_support"]

ROOT = Path(__file__).resolve().parent.parent
FILES = 300
HASHING = ["--embed-model", "hashing-384", "--embed-backend", "hashing"]
#: Small chunks, so that each file gives a few and the driver writes several batches.
CHUNKING = ["--chunk-size", "48", "--chunk-overlap", "8"]


def _need_ray() -> None:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray[data] is not installed, and CI must run the Ray tests")
        pytest.skip("ray[data] is not installed (pip install 'ragkit[ray]')")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray cluster of two nodes with one CPU each; its address."""
    _need_ray()
    from ray.cluster_utils import Cluster

    small = 120 * 1024 * 1024
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "object_store_memory": small,
            "include_dashboard": False,
            "node_ip_address": "127.0.0.1",
        },
    )
    try:
        c.add_node(num_cpus=1, object_store_memory=small, node_ip_address="127.0.0.1")
        c.wait_for_nodes()
        yield c.address
    finally:
        c.shutdown()


@pytest.fixture
def pg(store_url: Callable[[str], str]) -> str:
    """The DSN of the session's PostgreSQL on a loopback TCP port, with a password."""
    return store_url("pgvector-tcp")


def write_corpus(folder: Path, n: int = FILES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        topic = ["rivers", "engines", "bread", "comets", "violins", "glaciers"][i % 6]
        paras = [
            f"Note {i} on {topic}, part {j}: " + " ".join(f"w{i}x{j}y{k}" for k in range(14))
            for j in range(3)
        ]
        (folder / f"note{i:04d}.md").write_text(f"# Note {i}\n\n" + "\n\n".join(paras) + "\n")


def settings(data_dir: Path, collection: str, dsn: str, *, hashing: bool = True) -> Settings:
    extra = {"embed_model": "hashing-384", "embed_backend": "hashing"} if hashing else {}
    return Settings(
        data_dir=data_dir,
        collection=collection,
        store="pgvector",
        store_url=dsn,
        chunk_size=48 if hashing else None,
        chunk_overlap=8 if hashing else None,
        **extra,
    )


def snapshot(s: Settings) -> dict:
    """Everything in the store (id -> text, metadata, vector) and the committed records."""
    with open_collection(s) as col:
        chunks: dict[str, tuple] = {}
        vectors: dict[str, np.ndarray] = {}
        for batch, vecs in col.store.scan(batch_size=500):
            for c, v in zip(batch, vecs, strict=True):
                chunks[c.id] = (c.text, dict(c.metadata))
                vectors[c.id] = np.asarray(v, dtype=np.float32)
        records = list(col.records.all())
        assert all(r.committed for r in records), [r.source for r in records if not r.committed]
        return {
            "chunks": chunks,
            "vectors": vectors,
            "records": {r.source: sorted(r.chunk_ids) for r in records},
        }


def assert_same(got: dict, want: dict, *, atol: float = 0.0) -> None:
    assert got["records"] == want["records"]
    assert got["chunks"].keys() == want["chunks"].keys()
    assert got["chunks"] == want["chunks"]  # texts and metadata
    for ident, v in want["vectors"].items():
        if atol:
            assert np.allclose(got["vectors"][ident], v, atol=atol), ident
        else:
            assert np.array_equal(got["vectors"][ident], v), ident


def clean_ingest(folder: Path, data_dir: Path, name: str, dsn: str, **kw: bool) -> dict:
    """A single-process ingest of ``folder`` into a new collection; its snapshot. (The
    PostgreSQL server is the session's: every collection name in this module is its own.)"""
    s = settings(data_dir, name, dsn, **kw)
    with open_collection(s, create=True) as col:
        col.ingest([folder])
    return snapshot(s)


def cli_ingest(
    folder: Path, data_dir: Path, name: str, dsn: str, *args: str, env: dict | None = None
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "apps.cli",
        "ingest",
        str(folder),
        "--data-dir",
        str(data_dir),
        "-c",
        name,
        "--store",
        "pgvector",
        "--store-url",
        dsn,
        "--json",
        *HASHING,
        *CHUNKING,
        "--engine",
        "ray",
        *args,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def run_cli(*a: object, **kw: object) -> dict:
    proc = cli_ingest(*a, **kw)  # type: ignore[arg-type]
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out)


def test_ray_ingest_equals_local_and_stays_incremental(
    cluster: str, pg: str, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder)
    data = tmp_path / "rag"
    ray_args = ("--ray-address", cluster, "--ray-workers", "2", "--ray-batch-size", "16")

    first = run_cli(folder, data, "viaray", pg, *ray_args)
    assert first["added"] == FILES and not first["failed"]
    assert first["embedded"] == first["chunks"] == first["total_chunks"] > FILES
    assert_same(snapshot(settings(data, "viaray", pg)), clean_ingest(folder, data, "local", pg))

    # Nothing changed: nothing is shipped to the cluster, nothing embedded or written.
    again = run_cli(folder, data, "viaray", pg, *ray_args)
    assert again["unchanged"] == FILES
    assert again["embedded"] == again["chunks"] == 0

    # A changed, a deleted and an added file.
    changed = folder / "note0007.md"
    changed.write_text("# Note 7\n\nRewritten: a note about lighthouses and their keepers.\n")
    (folder / "note0011.md").unlink()
    (folder / "extra.md").write_text("# Extra\n\nA new note on tides, moons and harbours.\n")
    third = run_cli(folder, data, "viaray", pg, *ray_args)
    assert (third["added"], third["updated"], third["deleted"]) == (1, 1, 1)
    assert third["unchanged"] == FILES - 2
    assert_same(snapshot(settings(data, "viaray", pg)), clean_ingest(folder, data, "local2", pg))


def test_without_an_address_a_ray_of_its_own_is_started_and_shut_down(
    pg: str, tmp_path: Path
) -> None:
    """``rag ingest DIR --engine ray`` with no cluster: the CLI starts a Ray of its own (from
    its main thread: started from another, it lost its object store and the process died
    without a word) and ends it."""
    _need_ray()
    folder = tmp_path / "docs"
    write_corpus(folder, 20)
    data = tmp_path / "rag"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = cli_ingest(folder, data, "ownray", pg, "--ray-workers", "1", env=env)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert json.loads(out)["added"] == 20
    assert_same(snapshot(settings(data, "ownray", pg)), clean_ingest(folder, data, "own", pg))


def test_options_reach_ray_and_a_killed_actor_is_replaced(
    cluster: str, pg: str, tmp_path: Path
) -> None:
    from connectors.ray_engine import RayEngine, RaySettings

    folder = tmp_path / "docs"
    write_corpus(folder)
    data = tmp_path / "rag"
    engine = RayEngine(RaySettings(address=cluster, workers=2, batch_size=5))
    killed: list[tuple[int, Progress]] = []

    def kill_one_actor(p: Progress) -> None:
        # The first chunks are back: one actor has embedded a batch. Kill it, mid-run.
        if not killed and p.chunks > 0 and engine.stats.actors:
            pid = min(engine.stats.actors)
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, p))

    s = settings(data, "killed", pg)
    with open_collection(s, create=True) as col:
        report = col.ingest([folder], engine=engine, progress=kill_one_actor)
    assert killed, "no actor was killed"
    pid, at = killed[0]
    assert at.files_done < FILES  # mid-run
    assert report.added == FILES and not report.failed
    # The options reached Ray: two actors at first, batches of at most five files, and a
    # replacement for the killed one.
    assert max(engine.stats.batch_items) == 5
    assert len(engine.stats.actors - {pid}) >= 2
    assert_same(snapshot(s), clean_ingest(folder, data, "killed-clean", pg))


def test_driver_killed_mid_run_then_rerun_converges(cluster: str, pg: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write_corpus(folder)
    data = tmp_path / "rag"
    args = ("--ray-address", cluster, "--ray-workers", "2", "--ray-batch-size", "2")
    proc = cli_ingest(folder, data, "driver", pg, *args)
    records = data / "collections" / "pgvector" / "driver" / "records.sqlite"
    deadline = time.monotonic() + 120
    written = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if records.exists():
                try:
                    with sqlite3.connect(f"file:{records}?mode=ro", uri=True) as db:
                        written = db.execute("SELECT count(*) FROM sources").fetchone()[0]
                except sqlite3.Error:
                    written = 0
                if written:
                    break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    assert written, "the driver wrote nothing before it was killed"
    with sqlite3.connect(records) as db:
        committed = db.execute(
            "SELECT count(*) FROM sources WHERE pending_ids = '[]' AND content_hash != ''"
        ).fetchone()[0]
    assert committed < FILES  # it was killed mid-run

    rerun = run_cli(folder, data, "driver", pg, *args)
    assert not rerun["failed"]
    want = clean_ingest(folder, data, "driver-clean", pg)
    assert_same(snapshot(settings(data, "driver", pg)), want)


@pytest.mark.slow
def test_default_model_loads_once_per_actor(cluster: str, pg: str, tmp_path: Path) -> None:
    """The real default embedding model, loaded by the actors: the same vectors as here."""
    from connectors.ray_engine import RayEngine, RaySettings

    folder = tmp_path / "docs"
    write_corpus(folder, 12)
    data = tmp_path / "rag"
    engine = RayEngine(RaySettings(address=cluster, workers=2, batch_size=3))
    s = settings(data, "model", pg, hashing=False)
    with open_collection(s, create=True) as col:
        report = col.ingest([folder], engine=engine)
    assert report.added == 12 and report.embedded > 0
    assert len(engine.stats.actors) == 2
    want = clean_ingest(folder, data, "model-local", pg, hashing=False)
    assert_same(snapshot(s), want, atol=2e-5)


# --- without a cluster: the options and the errors ------------------------------------------


def rag_ingest(tmp_path: Path, *argv: str) -> int:
    """``rag ingest`` (in this process) of two small files into ``tmp_path/rag``."""
    from apps.cli import main

    _need_ray()
    folder = tmp_path / "docs"
    write_corpus(folder, 2)
    return main(["ingest", str(folder), "--data-dir", str(tmp_path / "rag"), *HASHING, *argv])


def _parse(*argv: str) -> object:
    from apps.cli import build_parser

    parser, _ = build_parser()
    return parser.parse_args(["ingest", "docs", *argv])


def test_every_ray_option_reaches_the_engine() -> None:
    from apps.cli.ingest import engine_from_args

    args = _parse(
        "--engine", "ray", "--ray-address", "ray://10.0.0.1:10001", "--ray-workers", "3",
        "--ray-batch-size", "7", "--ray-num-cpus", "2", "--ray-num-gpus", "0.5",
    )  # fmt: skip
    engine = engine_from_args(args)  # type: ignore[arg-type]
    s = engine.settings
    assert (s.address, s.workers, s.batch_size, s.num_cpus, s.num_gpus) == (
        "ray://10.0.0.1:10001", 3, 7, 2.0, 0.5,
    )  # fmt: skip
    assert engine_from_args(_parse()) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ray-workers", "2"], "--ray-workers only apply with --engine ray"),
        (["--engine", "ray", "--ray-workers", "0"], "--ray-workers must be at least 1"),
        (["--engine", "ray", "--ray-batch-size", "0"], "--ray-batch-size must be at least 1"),
        (["--engine", "ray", "--ray-num-cpus", "0"], "needs some CPU or GPU"),
        (["--engine", "ray", "--watch"], "leave out --engine ray"),
        (["--engine", "ray", "--ray-address", "nowhere"], "takes auto, HOST:PORT"),
        (["--engine", "ray", "--ray-num-gpus", "1"], "runs on CPUs only"),
    ],
)
def test_options_that_make_no_sense_are_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rag_ingest(tmp_path, *argv) != 0
    assert message in capsys.readouterr().err


def test_an_unreachable_cluster_is_a_clear_error_not_a_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.store_support import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    assert rag_ingest(tmp_path, "--engine", "ray", "--ray-address", address) == 1
    assert f"the Ray cluster at {address} cannot be reached" in capsys.readouterr().err
    assert time.monotonic() - started < 60


def test_without_ray_installed_the_hint_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.ray_engine import RayEngine
    from rag.engines import Recipe, WorkItem
    from rag.errors import MissingDependencyError
    from rag.source import SourceItem, SourceOptions, open_source

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where not installed
    source = open_source("filesystem", SourceOptions(targets=(str(tmp_path),)))
    recipe = Recipe("hashing-384", "hashing", 32, None, 48, 8)
    work = [WorkItem(SourceItem(str(tmp_path / "a.md"), 1, 0.0))]
    with pytest.raises(MissingDependencyError, match=r"pip install 'ragkit\[ray\]'"):
        list(RayEngine().compute(source, work, recipe))


def test_the_collection_lock_still_keeps_a_second_ingest_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = Settings(data_dir=tmp_path / "rag", embed_model="hashing-384", embed_backend="hashing")
    with open_collection(s, create=True) as col, col.lock():
        code = rag_ingest(tmp_path, "--engine", "ray", "--ray-address", "127.0.0.1:1")
    assert code == 1
    assert "is being written by pid" in capsys.readouterr().err
