"""The filesystem connector: find the files to ingest, and read each into documents.

:class:`FilesystemSource` is the ``filesystem`` source plugin (:mod:`rag.source`) built on
the two functions below.

:func:`walk` yields a :class:`FileRef` per candidate file, or a :class:`~rag.types.Failure`
for a path it cannot use, in a deterministic order. :func:`load` reads one file and parses
it by its suffix (see :mod:`connectors.parsers`); every problem with the file surfaces as an
:class:`~rag.errors.IngestError` whose message a user can act on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from connectors.formats import PARSERS, parse
from rag.contract import check_metadata
from rag.errors import ConfigError, IngestError
from rag.source import SourceItem, SourceOptions
from rag.types import Document, Failure

#: Suffixes that :func:`walk` yields and :func:`load` can parse (matched lower-cased).
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(PARSERS)

#: Folders that are never descended into (tool caches, VCS data, virtual environments).
IGNORED_DIRS: frozenset[str] = frozenset(
    {
        ".git", ".hg", ".svn", ".bzr", "CVS", ".venv", "venv", ".env", "node_modules",
        "__pycache__", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
        ".ipynb_checkpoints", ".eggs", "__pypackages__", ".idea", ".vscode", ".rag",
    }
)  # fmt: skip

DEFAULT_MAX_BYTES = 50 * 2**20


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file found by :func:`walk`: its resolved absolute path, size and mtime."""

    path: Path
    size: int
    mtime: float


# ---------------------------------------------------------------------------------------
# Globs


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile an fnmatch-style glob in which ``**/`` also matches zero folders.

    As in fnmatch, ``*`` and ``?`` match ``/`` too, so ``*.md`` matches Markdown files at
    any depth. A trailing ``/`` means "everything below": ``drafts/`` is ``drafts/**``.
    """
    pattern = pattern.strip().replace(os.sep, "/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):
        pattern += "**"
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern[i] == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append(".*")
        elif pattern[i] == "?":
            out.append(".")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("(?s:" + "".join(out) + r")\Z")


class _Filter:
    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        if isinstance(include, str) or isinstance(exclude, str):
            raise TypeError("include and exclude take a sequence of glob patterns, not a str")
        self.include = [_glob_regex(p) for p in include if p.strip()]
        self.exclude = [_glob_regex(p) for p in exclude if p.strip()]

    def prunes(self, rel_dir: str) -> bool:
        """Whether an excluded pattern covers the whole folder ``rel_dir``."""
        return any(r.match(rel_dir) or r.match(rel_dir + "/") for r in self.exclude)

    def accepts(self, rel_file: str) -> bool:
        if any(r.match(rel_file) for r in self.exclude):
            return False
        return not self.include or any(r.match(rel_file) for r in self.include)


# ---------------------------------------------------------------------------------------
# walk


def human_size(size: float) -> str:
    """``52428800`` -> ``"50.0 MB"`` (binary multiples, the units people read)."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            break
    return f"{size:.1f} {unit}"


def _os_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, FileNotFoundError):
        return "no such file or directory"
    return (error.strerror or type(error).__name__).lower()


def _link_failure(path: str, error: OSError) -> Failure:
    """Failure for a symlink whose target cannot be stat'ed (dangling, or a loop)."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    if error.errno == errno.ELOOP:
        return Failure(path, f"symlink loop: {path} -> {target} never reaches a file")
    if isinstance(error, FileNotFoundError):
        return Failure(path, f"broken symlink: its target {target} does not exist")
    return Failure(path, _os_reason(error))


def _supported(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SUPPORTED_SUFFIXES


class _Walk:
    """State of one :func:`walk` call: the filters and what has been seen already."""

    def __init__(self, filters: _Filter, max_bytes: int) -> None:
        self.filters = filters
        self.max_bytes = max_bytes
        self.seen_files: set[tuple[int, int]] = set()
        self.seen_dirs: set[tuple[int, int]] = set()

    def file(self, path: str, st: os.stat_result) -> Iterator[FileRef | Failure]:
        if not stat.S_ISREG(st.st_mode):
            yield Failure(path, "not a regular file")
            return
        if st.st_size > self.max_bytes:
            limit, size = human_size(self.max_bytes), human_size(st.st_size)
            yield Failure(path, f"larger than the {limit} limit ({size})")
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen_files:  # the same file reached again, by a link or a second root
            return
        self.seen_files.add(key)
        yield FileRef(Path(os.path.realpath(path)), st.st_size, st.st_mtime)

    def folder(self, root: str, root_st: os.stat_result) -> Iterator[FileRef | Failure]:
        """Depth-first with the entries of each folder in name order, so that the files come
        out sorted by their path components."""
        root_key = (root_st.st_dev, root_st.st_ino)
        if root_key in self.seen_dirs:
            return
        self.seen_dirs.add(root_key)
        # Stack items: (absolute path, path relative to root, ancestors' (dev, ino)).
        stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = []
        yield from self._list(root, "", frozenset({root_key}), stack)
        while stack:
            path, rel, ancestors = stack.pop()
            try:
                st = os.stat(path)
            except OSError as e:
                # Not knowing whether it is a file or a folder, stay silent only if neither
                # would be wanted.
                if self.filters.prunes(rel) or (_supported(path) and not self.filters.accepts(rel)):
                    continue
                if os.path.islink(path):
                    yield _link_failure(path, e)
                else:
                    yield Failure(path, _os_reason(e))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if self.filters.prunes(rel):
                    continue
                if key in ancestors:
                    real = os.path.realpath(path)
                    yield Failure(
                        path, f"symlink loop: leads back to {real}, which contains it; skipped"
                    )
                    continue
                if key in self.seen_dirs:
                    continue
                self.seen_dirs.add(key)
                yield from self._list(path, rel, ancestors | {key}, stack)
            elif _supported(path) and self.filters.accepts(rel):
                yield from self.file(path, st)

    def _list(
        self,
        folder: str,
        rel: str,
        ancestors: frozenset[tuple[int, int]],
        stack: list[tuple[str, str, frozenset[tuple[int, int]]]],
    ) -> Iterator[Failure]:
        names: list[str] = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or name in IGNORED_DIRS:
                        continue
                    # Names without a supported suffix matter only if they are folders; a
                    # name with no suffix at all may also be a dangling link to a folder.
                    if os.path.splitext(name)[1] and not _supported(name):
                        try:
                            if not entry.is_dir():
                                continue
                        except OSError:
                            continue
                    names.append(name)
        except OSError as e:
            yield Failure(folder, _os_reason(e))
            return
        children = [
            (os.path.join(folder, name), f"{rel}/{name}" if rel else name, ancestors)
            for name in sorted(names)
        ]
        stack.extend(reversed(children))


def walk(
    paths: Sequence[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[FileRef | Failure]:
    """Files to ingest under `paths` (files or folders), sorted, deterministic.

    Folders are walked recursively, skipping hidden entries (names starting with ".") and
    :data:`IGNORED_DIRS`; only files with a :data:`SUPPORTED_SUFFIXES` suffix are yielded.
    A file named explicitly is yielded even when hidden, and yields a Failure when its type
    is unsupported. `paths` are handled in the order given; below each folder the files come
    in order of their path components.

    ``include`` and ``exclude`` are glob patterns matched against the path relative to the
    walked folder in posix form (for a file named explicitly, its name): ``*.md``,
    ``docs/**/*.rst``, ``drafts/**``. ``*`` matches across ``/`` as in fnmatch, and ``**/``
    also matches no folder at all. An empty ``include`` takes every supported file;
    ``exclude`` wins over ``include``, and a folder it matches is not entered.

    Symlinks are followed; a link back into an enclosing folder, a dangling link and a file
    over ``max_bytes`` each yield a Failure, and the walk goes on. No file is yielded twice.
    ``Failure.source`` is the absolute path as reached, ``FileRef.path`` the resolved one.
    """
    if isinstance(paths, str | Path):
        raise TypeError("walk() takes a sequence of paths; wrap a single path in a list")
    state = _Walk(_Filter(include, exclude), max_bytes)
    for raw in paths:
        path = os.path.abspath(os.path.expanduser(os.fspath(raw)))
        try:
            os.lstat(path)
        except OSError as e:
            yield Failure(path, _os_reason(e))
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            yield _link_failure(path, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from state.folder(path, st)
            continue
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in SUPPORTED_SUFFIXES:
            shown = f"'{suffix}'" if suffix else "(no suffix)"
            supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
            yield Failure(path, f"unsupported file type {shown}; supported: {supported}")
            continue
        if state.filters.accepts(os.path.basename(path)):
            yield from state.file(path, st)


# ---------------------------------------------------------------------------------------
# load


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError as e:
        raise IngestError("disappeared before it could be read") from e
    except OSError as e:
        raise IngestError(_os_reason(e)) from e


def _read_stable(path: Path) -> tuple[bytes, os.stat_result]:
    """Read the file's bytes, making sure it did not change meanwhile (one retry)."""
    for _ in range(2):
        before = _stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise IngestError("not a regular file")
        try:
            data = _read_bytes(path)
        except FileNotFoundError as e:
            raise IngestError("disappeared before it could be read") from e
        except IsADirectoryError as e:
            raise IngestError("not a regular file") from e
        except OSError as e:
            raise IngestError(_os_reason(e)) from e
        after = _stat(path)
        if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) and len(
            data
        ) == after.st_size:
            return data, after
    raise IngestError("changed while being read; run the ingest again")


def load(ref: FileRef) -> list[Document]:
    """Read and parse one file. Raises IngestError(reason) with a short reason a user can act on.

    One Document per file, except PDFs: one per page with text. Every Document carries the
    metadata ``source``, ``title``, ``file_type``, ``mtime``, ``content_hash`` (sha256 of the
    bytes parsed) and ``size``; PDF pages add ``page`` and ``page_count``, text that was not
    UTF-8 adds ``encoding``. ``format`` is "markdown" for Markdown and for the formats
    converted to it (reStructuredText, HTML, DOCX), else "text".
    """
    path = Path(ref.path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise IngestError(f"unsupported file type '{suffix}'")
    data, st = _read_stable(path)
    if not data:
        raise IngestError("empty file")
    parsed = parse(suffix, data, path.stem)
    source = str(path)
    common = {
        "source": source,
        "file_type": suffix[1:],
        "mtime": st.st_mtime,
        "content_hash": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    return [
        Document(
            source=source,
            text=p.text,
            metadata=check_metadata({**common, "title": p.title, **p.extra}),
            format=p.format,
        )
        for p in parsed
    ]


# ---------------------------------------------------------------------------------------
# The source plugin


class FilesystemSource:
    """Files and folders on this machine, walked by :func:`walk` and read by :func:`load`.

    The ``filesystem`` source plugin.

    Item ids are resolved absolute paths. A recorded file is covered (and removed by a full
    cleanup when it disappears) when it lies under one of the targets as given.
    """

    name = "filesystem"
    description = "files and folders: text, Markdown, reST, HTML, PDF, DOCX, CSV"

    def __init__(self, options: SourceOptions) -> None:
        if not options.targets:
            raise ConfigError("name at least one file or folder to ingest")
        self.options = options
        self._roots = [
            os.path.abspath(os.path.expanduser(os.fspath(t))).rstrip(os.sep) or os.sep
            for t in options.targets
        ]

    def scan(self) -> Iterator[SourceItem | Failure]:
        o = self.options
        for item in walk(
            list(o.targets), include=o.include, exclude=o.exclude, max_bytes=o.max_bytes
        ):
            yield item if isinstance(item, Failure) else _item(item)

    def load(self, item: SourceItem) -> list[Document]:
        return load(FileRef(Path(item.id), item.size, item.mtime))

    def covers(self, source_id: str) -> bool:
        return any(
            source_id == root or source_id.startswith(root.rstrip(os.sep) + os.sep)
            for root in self._roots
        )

    def locate(self, source_id: str) -> SourceItem | None:
        try:
            st = os.stat(source_id)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return SourceItem(source_id, st.st_size, st.st_mtime)


def _item(ref: FileRef) -> SourceItem:
    return SourceItem(str(ref.path), ref.size, ref.mtime)
