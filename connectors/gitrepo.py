"""Reading a git repository through the git command line, for :mod:`connectors.git`:
commands, blob contents (one ``git cat-file --batch`` process) and the commit that last
changed each file (one ``git log --raw`` walk, read only as far as needed).

Every command runs without a terminal prompt (``GIT_TERMINAL_PROMPT=0``) and with the
user's configuration otherwise, so credential helpers and SSH keys work as in a shell.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from rag.errors import ConfigError, IngestError


class GitError(IngestError):
    """A git command failed; the message is its first ``fatal:``/``error:`` line. While an
    item is read it is that item's failure, like any :class:`~rag.errors.IngestError`."""


def git_env() -> dict[str, str]:
    """The environment git runs in: the user's, without prompts or optional locks."""
    env = dict(os.environ)
    # Never stop to ask for a password: a clone that needs one fails with git's message.
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    return env


#: Bytes of ``git log`` output read at a time.
READ_BYTES = 1 << 16
#: Settings for every command: paths as they are, no signatures or colours in the output.
GIT_CONFIG = ("-c", "core.quotepath=off", "-c", "log.showSignature=false", "-c", "color.ui=never")


def run_git(args: list[str], *, git_dir: str | None = None, cwd: str | None = None) -> bytes:
    """The output of ``git args`` (in ``git_dir``'s repository, or from ``cwd``); a failure
    raises :class:`GitError` with git's own message."""
    cmd = ["git", *GIT_CONFIG]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    try:
        done = subprocess.run(
            cmd + args, cwd=cwd, env=git_env(), capture_output=True, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as e:
        raise ConfigError(
            "the git source needs the git command line, which is not installed"
        ) from e
    if done.returncode != 0:
        raise GitError(_message(done.stderr))
    return done.stdout


def _message(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    for line in lines:
        for prefix in ("fatal: ", "error: "):
            if line.startswith(prefix):
                return line[len(prefix) :]
    return lines[-1] if lines else "git failed"


class BlobReader:
    """Blob contents through one ``git cat-file --batch`` process."""

    def __init__(self, git_dir: str, procs: list[subprocess.Popen]) -> None:
        self.git_dir = git_dir
        self._procs = procs
        self._proc: subprocess.Popen | None = None

    def read(self, sha: str) -> bytes:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                ["git", *GIT_CONFIG, f"--git-dir={self.git_dir}", "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=git_env(),
            )
            self._procs.append(self._proc)
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(sha.encode() + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3 or header[1] != b"blob":
                raise IngestError(f"blob {sha} is missing from the repository")
            size = int(header[2])
            data = proc.stdout.read(size + 1)[:size]
        except (OSError, ValueError) as e:
            proc.kill()
            raise IngestError(f"could not read blob {sha}: {e}") from e
        if len(data) != size:
            proc.kill()
            raise IngestError(f"could not read blob {sha}: git stopped")
        return data


@dataclass(frozen=True, slots=True)
class Change:
    """The commit that last changed a file."""

    commit: str
    author: str
    time: float
    date: str


class History:
    """The last commit to change each path, found by walking ``git log --raw`` from the
    ingested commit only as far as the paths asked about need (one walk per ingest)."""

    def __init__(self, git_dir: str, commit: str, procs: list[subprocess.Popen]) -> None:
        self.git_dir = git_dir
        self.commit = commit
        self._procs = procs
        self._found: dict[bytes, Change] = {}
        self._out: IO[bytes] | None = None
        self._buffer = b""
        self._current: Change | None = None
        self._expect_path: bool | None = None
        self._done = False
        self._head_change: Change | None = None

    def last_change(self, path: bytes) -> Change:
        while path not in self._found and not self._done:
            self._advance()
        if path in self._found:
            return self._found[path]
        # Not in any diff the walk shows (a merge brought it in): the ingested commit.
        return self._head()

    def _head(self) -> Change:
        if self._head_change is not None:
            return self._head_change
        out = run_git(
            ["show", "-s", f"--format={_FORMAT}", self.commit, "--"], git_dir=self.git_dir
        )
        change = _parse_header(out.strip(b"\x00\n").lstrip(b"\x1e"))
        if change is None:
            raise IngestError(f"could not read commit {self.commit}")
        self._head_change = change
        return change

    def _start(self) -> IO[bytes]:
        proc = subprocess.Popen(
            ["git", *GIT_CONFIG, f"--git-dir={self.git_dir}", "log", "--raw", "--no-renames",
             "--no-abbrev", "-z", "--no-color", f"--format={_FORMAT}", self.commit, "--"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=git_env(),
        )  # fmt: skip
        self._procs.append(proc)
        assert proc.stdout is not None
        return proc.stdout

    def _advance(self) -> None:
        if self._out is None:
            self._out = self._start()
        chunk = self._out.read1(READ_BYTES)  # type: ignore[attr-defined]
        if not chunk:
            self._done = True
            chunk = b"\x00"
        tokens = (self._buffer + chunk).split(b"\x00")
        self._buffer = tokens.pop()  # cut off at the chunk's end (empty at a token's end)
        for token in tokens:
            self._feed(token)

    def _feed(self, raw: bytes) -> None:
        if self._expect_path is not None:
            keep, self._expect_path = self._expect_path, None
            if keep and self._current is not None and raw not in self._found:
                self._found[raw] = self._current
            return
        token = raw.lstrip(b"\n")
        if token.startswith(b"\x1e"):
            self._current = _parse_header(token[1:])
        elif token.startswith(b":"):
            # ":<mode> <mode> <blob> <blob> <status>", then the path: a deletion names no
            # file of the tree.
            self._expect_path = not token.rstrip().endswith(b"D")


_FORMAT = "%x1e%H%x1f%an%x1f%ct%x1f%cI"


def _parse_header(raw: bytes) -> Change | None:
    fields = raw.decode("utf-8", "replace").split("\x1f")
    if len(fields) != 4:
        return None
    commit, author, stamp, date = fields
    try:
        return Change(commit, author, float(stamp), datetime.fromisoformat(date).isoformat())
    except ValueError:
        return None


def stop(procs: list[subprocess.Popen]) -> None:
    """End the helper processes in ``procs`` (blob readers, history walks) and forget them."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        proc.wait()
    procs.clear()
