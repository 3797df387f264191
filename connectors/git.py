"""The git connector: the files tracked at a ref of a repository, read from its objects.

``rag ingest git+/path/to/repo@main`` reads the tree of ``main`` (a branch, tag or commit;
``HEAD`` when no ``@ref`` is given), never the working tree: untracked and ignored files are
not part of a commit, so they are never read. ``git+https://host/owner/repo.git@v1.2`` (any
URL or ``user@host:path`` that ``git clone`` takes) is mirrored into the collection's state
folder on first use and fetched on each later ingest.

Item ids are ``git+<repo>@<ref>:<path>``: the repository as a resolved local path or as the
URL given, the ref as given, the file's path in the tree (bytes that are not UTF-8 written
``\\xHH``, as the folder connector writes them). The ref is in the id, so that a branch and a
tag of one repository can live side by side in a collection; a new commit on the branch
keeps every id.

Incremental by blob id: an item's change token (``SourceItem.mtime``) is the first 13 hex
digits of the blob's id as an integer (exact in a float), its size the blob's. A commit that
changes one file changes one blob, so re-ingesting after it reads and embeds that file only;
a file the commit deleted is no longer in the tree and is removed. Each document carries
``path``, ``repo``, ``ref``, ``blob``, and the ``commit`` that last changed the file (the
newest commit ``git log`` shows adding or modifying it; the ingested commit itself when only
a merge did), its ``author``, ``commit_date`` (ISO 8601) and ``mtime`` (the commit time, for
date filters). The history is walked once per ingest, only as far back as the files read
need.

A clone URL never holds a password (it would be stored with the clone): git's own
credential helpers, ``GIT_ASKPASS`` or an SSH key provide it, and git never stops to ask.

The same files are selected as in a folder: by the include/exclude patterns, without hidden
paths or :data:`~connectors.filesystem.IGNORED_DIRS`, by suffix. Symbolic links and
submodules are listed as skipped, and so is a blob whose first 8000 bytes hold a NUL byte
(git's own test for binary content) unless it is a PDF or a ZIP-based document.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from connectors.filesystem import IGNORED_DIRS, SUPPORTED_SUFFIXES, _Filter, human_size, source_id
from connectors.formats import parse
from connectors.gitrepo import BlobReader, GitError, History, run_git, stop
from rag.contract import check_metadata
from rag.errors import ConfigError, IngestError, MetadataError, NothingToIndex
from rag.source import SourceItem, SourceOptions
from rag.types import Document, Failure, Skipped

#: Bytes git looks at to call a blob binary (a NUL among them).
_BINARY_PROBE = 8000
#: Binary containers whose parsers read them (PDF, and DOCX and the other ZIP formats).
_DOCUMENT_MAGIC = (b"%PDF-", b"PK\x03\x04")
#: A ref may not hold these: ``:`` separates it from the path in ids, the rest is git's rule.
_BAD_REF = re.compile(r"[\x00-\x20\x7f:]|\.\.|@\{|^-|^$")
_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?[^@/:]+:(?!//)")


# ---------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True, slots=True)
class GitTarget:
    """A target ``git+<repo>[@<ref>]`` taken apart: ``repo`` as given, ``ref`` (``HEAD``
    when none is given), and whether ``repo`` is a URL to clone rather than a local path."""

    repo: str
    ref: str
    remote: bool


def parse_target(target: str) -> GitTarget:
    """Read ``git+<repo>[@<ref>]``. The ref follows the last ``@`` of the repository's path
    (an ``@`` in a URL's user part or before an scp-like ``host:`` is not one)."""
    if not target.startswith("git+") or len(target) == 4:
        raise ConfigError(f"{target!r} is not a git target: write git+<repository>[@<ref>]")
    rest = target[4:]
    ref: str | None = None
    if "://" in rest:
        scheme, _, after = rest.partition("://")
        netloc, slash, path = after.partition("/")
        if "@" in path:
            path, _, ref = path.rpartition("@")
        repo, remote = f"{scheme}://{netloc}{slash}{path}", True  # file:// too: a clone
    elif not rest.startswith(("/", ".", "~")) and _SCP_LIKE.match(rest):
        host, _, path = rest.partition(":")
        if "@" in path:
            path, _, ref = path.rpartition("@")
        repo, remote = f"{host}:{path}", True
    else:
        repo, remote = rest, False
        if "@" in rest and not os.path.exists(os.path.expanduser(rest)):
            repo, _, ref = rest.rpartition("@")
    if ref is not None and _BAD_REF.search(ref):
        raise ConfigError(f"{target!r}: {ref!r} is not a branch, tag or commit name")
    if remote:
        _refuse_password(repo)
    return GitTarget(repo.rstrip("/") or repo, ref if ref is not None else "HEAD", remote)


def _refuse_password(url: str) -> None:
    parts = urlsplit(url) if "://" in url else None
    if parts is not None and parts.password is not None:
        shown = url.replace(f":{parts.password}@", ":***@", 1)
        raise ConfigError(
            f"{shown}: a password in a clone URL would be stored with the clone and shown in "
            "messages; give it to git instead (a credential helper, GIT_ASKPASS, an SSH key)"
        )


def _token(blob: str) -> float:
    """A blob id as a change token: its first 13 hex digits (52 bits, exact in a float)."""
    return float(int(blob[:13], 16))


class _Repo:
    """One target: where its objects are, and (after a scan) the commit its ref names."""

    def __init__(self, target: GitTarget, label: str, git_dir: str | None) -> None:
        self.target = target
        self.label = label
        self.git_dir = git_dir
        #: What every id from this target starts with, and the id of a failure to read it.
        self.prefix = f"git+{label}@{target.ref}:"
        self.failure_id = f"git+{label}@{target.ref}"
        self.listed = False
        self.history: History | None = None
        self.blobs: BlobReader | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    repo: _Repo
    path: bytes
    blob: str
    size: int


# ---------------------------------------------------------------------------------------
# The source plugin


class GitSource:
    """The files tracked at a ref of a git repository (see the module docstring).

    The ``git`` source plugin; it reads targets ``git+<repo>[@<ref>]``.
    """

    name: ClassVar[str] = "git"
    description: ClassVar[str] = "git repositories: the files tracked at a branch, tag or commit"

    @classmethod
    def claims(cls, target: str) -> bool:
        return target.startswith("git+")

    def __init__(self, options: SourceOptions) -> None:
        if not options.targets:
            raise ConfigError("name a repository to ingest: git+<path or URL>[@<ref>]")
        self.options = options
        self._filter = _Filter(options.include, options.exclude)  # bad patterns fail here
        self._repos = [self._open(parse_target(t)) for t in options.targets]
        self._entries: dict[str, _Entry] = {}
        self._procs: list[subprocess.Popen] = []
        weakref.finalize(self, stop, self._procs)

    def _open(self, target: GitTarget) -> _Repo:
        if target.remote:
            if self.options.state_dir is None:
                raise ConfigError(
                    f"cloning {target.repo} needs a folder to keep the clone in "
                    "(SourceOptions.state_dir; a collection's ingest gives one)"
                )
            return _Repo(target, target.repo, None)
        path = os.path.abspath(os.path.expanduser(target.repo))
        if not os.path.isdir(path):
            raise ConfigError(f"{source_id(path)}: no such directory")
        try:
            out = run_git(["rev-parse", "--absolute-git-dir", "--show-prefix"], cwd=path)
        except GitError as e:
            raise ConfigError(f"{source_id(path)} is not a git repository ({e})") from None
        git_dir, _, prefix = out.decode("utf-8", "surrogateescape").partition("\n")
        if prefix.strip():
            raise ConfigError(
                f"{source_id(path)} is a folder inside a repository: name the repository "
                f"(and --include '{source_id(prefix.strip())}**' for this folder)"
            )
        return _Repo(target, source_id(os.path.realpath(path)), git_dir.strip())

    # --- scan ------------------------------------------------------------------------------

    def scan(self) -> Iterator[SourceItem | Failure | Skipped]:
        stop(self._procs)  # a previous scan's readers
        self._entries = {}
        for repo in self._repos:
            repo.listed = False
            try:
                if repo.target.remote:
                    repo.git_dir = self._mirror(repo.target.repo)
                assert repo.git_dir is not None
                commit = self._resolve(repo)
                tree = run_git(
                    ["ls-tree", "-r", "-l", "-z", "--full-tree", commit], git_dir=repo.git_dir
                )
            except GitError as e:
                yield Failure(repo.failure_id, str(e))
                continue
            repo.history = History(repo.git_dir, commit, self._procs)
            repo.blobs = BlobReader(repo.git_dir, self._procs)
            repo.listed = True
            yield from self._list(repo, tree)

    def _resolve(self, repo: _Repo) -> str:
        ref = repo.target.ref
        try:
            out = run_git(
                ["rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"],
                git_dir=repo.git_dir,
            )
        except GitError:
            raise GitError(f"no branch, tag or commit named {ref!r} in {repo.label}") from None
        return out.decode().strip()

    def _list(self, repo: _Repo, tree: bytes) -> Iterator[SourceItem | Failure | Skipped]:
        limit = self.options.max_bytes
        for line in tree.split(b"\x00"):
            if not line:
                continue
            meta, _, path = line.partition(b"\t")
            mode, kind, blob, size = meta.decode().split()
            rel = source_id(path.decode("utf-8", "surrogateescape"))
            if not self._wanted(rel):
                continue
            ident = repo.prefix + rel
            if ident in self._entries:
                continue  # the same repository and ref named twice
            if kind == "commit":
                yield Skipped(ident, "a submodule: ingest its repository as a target of its own")
                continue
            if mode == "120000":
                yield Skipped(ident, "a symbolic link: not followed")
                continue
            suffix = os.path.splitext(rel)[1].lower()
            if suffix not in SUPPORTED_SUFFIXES:
                shown = f"{suffix!r}" if suffix else "(no suffix)"
                yield Skipped(ident, f"unsupported file type {shown}")
                continue
            if int(size) > limit:
                yield Failure(
                    ident, f"larger than the {human_size(limit)} limit ({human_size(int(size))})"
                )
                continue
            self._entries[ident] = _Entry(repo, path, blob, int(size))
            yield SourceItem(ident, int(size), _token(blob))

    def _wanted(self, rel: str) -> bool:
        """Whether a walk of the tree as a folder would take the path ``rel`` (any suffix)."""
        parts = rel.split("/")
        if any(p.startswith(".") or p in IGNORED_DIRS for p in parts):
            return False
        if any(self._filter.prunes("/".join(parts[:n])) for n in range(1, len(parts))):
            return False
        return self._filter.accepts(rel)

    def _mirror(self, url: str) -> str:
        """A mirror clone of ``url`` in the state folder, fetched now; its git folder."""
        state = self.options.state_dir
        assert state is not None
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", url.rstrip("/").rsplit("/", 1)[-1])[:40]
        dest = os.path.join(state, f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:12]}")
        if os.path.isdir(dest):
            try:
                run_git(["fetch", "--prune", "--quiet", "origin"], git_dir=dest)
            except GitError as e:
                raise GitError(f"could not fetch {url}: {e}") from None
            return dest
        os.makedirs(state, exist_ok=True)
        for name in os.listdir(state):  # what an interrupted clone left
            if name.startswith(".clone-"):
                shutil.rmtree(os.path.join(state, name), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=".clone-", dir=state)
        try:
            run_git(["clone", "--mirror", "--quiet", "--", url, os.path.join(tmp, "repo")])
            os.rename(os.path.join(tmp, "repo"), dest)  # complete, or not there at all
        except GitError as e:
            raise GitError(f"could not clone {url}: {e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # --- the rest of the contract ----------------------------------------------------------

    def load(self, item: SourceItem) -> list[Document]:
        entry = self._entries.get(item.id)
        if entry is None:
            raise IngestError("no longer in the repository at this ref")
        repo = entry.repo
        assert repo.blobs is not None and repo.history is not None
        data = repo.blobs.read(entry.blob)
        if not data:
            raise NothingToIndex("empty file")
        if b"\x00" in data[:_BINARY_PROBE] and not data.startswith(_DOCUMENT_MAGIC):
            raise NothingToIndex("binary file")
        rel = item.id[len(repo.prefix) :]
        stem, suffix = os.path.splitext(rel.rsplit("/", 1)[-1])
        parsed = parse(suffix.lower(), data, stem)
        change = repo.history.last_change(entry.path)
        common = {
            "source": item.id,
            "file_type": suffix[1:].lower(),
            "path": rel,
            "repo": repo.label,
            "ref": repo.target.ref,
            "blob": entry.blob,
            "commit": change.commit,
            "author": change.author,
            "commit_date": change.date,
            "mtime": change.time,
            "content_hash": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        try:
            return [
                Document(
                    source=item.id,
                    text=p.text,
                    metadata=check_metadata({**common, "title": p.title, **p.extra}),
                    format=p.format,
                )
                for p in parsed
            ]
        except MetadataError as e:
            raise IngestError(f"unusable metadata: {e}") from e

    def covers(self, source_id: str) -> bool:
        for repo in self._repos:
            if source_id.startswith(repo.prefix):
                rel = source_id[len(repo.prefix) :]
                suffix = os.path.splitext(rel)[1].lower()
                # A repository that could not be read covers nothing: it keeps its files.
                return repo.listed and suffix in SUPPORTED_SUFFIXES and self._wanted(rel)
        return False

    def locate(self, source_id: str) -> SourceItem | None:
        entry = self._entries.get(source_id)
        if entry is None:
            return None
        return SourceItem(source_id, entry.size, _token(entry.blob))
