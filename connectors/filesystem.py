"""The filesystem connector: find the files to ingest, and read each into documents.

:class:`FilesystemSource` is the ``filesystem`` source plugin (:mod:`rag.source`) built on
the two functions below.

:func:`walk` yields a :class:`FileRef` per candidate file, or a :class:`~rag.types.Failure`
for a path it cannot use, in a deterministic order. :func:`load` reads one file and parses
it by its suffix (see :mod:`connectors.parsers`); every problem with the file surfaces as an
:class:`~rag.errors.IngestError` whose message a user can act on.

Names that are not UTF-8 (bytes a POSIX file name may hold, which Python carries as lone
surrogates) never reach anything but the operating system: every string this module hands
out (ids, ``source`` metadata, titles, failure paths) goes through :func:`source_id`.
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
from typing import ClassVar

from connectors.formats import (
    DEFAULT_OPTIONS,
    FORMAT_OPTIONS,
    PARSERS,
    FormatOptions,
    format_options,
    parse,
)
from rag.contract import check_metadata
from rag.errors import ConfigError, IngestError, MetadataError, NothingToIndex
from rag.source import SourceItem, SourceOptions
from rag.types import Document, Failure, Skipped

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
    """A file found by :func:`walk`: its absolute path (the target resolved, then the path as
    reached below it), size and mtime. The path is the operating system's: it may hold
    undecodable bytes as lone surrogates; :func:`source_id` makes it a valid string."""

    path: Path
    size: int
    mtime: float


# ---------------------------------------------------------------------------------------
# Names that are not UTF-8

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"\\x([89a-f][0-9a-f])|\\u(d[89a-f][0-9a-f]{2})")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def source_id(path: str) -> str:
    r"""``path`` as a valid Unicode string: unchanged when it is one, else with each byte that
    is not UTF-8 written ``\xHH`` (as Python's ``backslashreplace`` shows it: ``café`` in
    Latin-1 is ``caf\xe9``), and any other lone surrogate ``\udXXX``."""
    if not _SURROGATE.search(path):
        return path
    return _SURROGATE.sub(_escape, path)


def _os_path(ident: str) -> str:
    r"""The operating system's path for an id with ``\xHH`` escapes (see :func:`source_id`).
    Only escapes of bytes that cannot stand alone in UTF-8 (``\x80``-``\xff``) are read."""
    return _ESCAPE.sub(lambda m: chr(0xDC00 + int(m[1], 16)) if m[1] else chr(int(m[2], 16)), ident)


# ---------------------------------------------------------------------------------------
# Globs


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile an fnmatch-style glob in which ``**/`` also matches zero folders.

    As in fnmatch, ``*`` and ``?`` match ``/`` too, so ``*.md`` matches Markdown files at
    any depth. A trailing ``/`` means "everything below": ``drafts/`` is ``drafts/**``.
    Raises :class:`~rag.errors.ConfigError` naming a pattern that cannot be compiled.
    """
    given = pattern
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
    try:
        return re.compile("(?s:" + "".join(out) + r")\Z")
    except re.error as e:
        raise ConfigError(f"bad glob pattern {given!r}: {e.msg}") from None


class _Filter:
    """The include/exclude globs, matched against relative paths as :func:`source_id` shows
    them (patterns too), so that a path and its id always get the same answer."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        if isinstance(include, str) or isinstance(exclude, str):
            raise TypeError("include and exclude take a sequence of glob patterns, not a str")
        self.include = [_glob_regex(source_id(p)) for p in include if p.strip()]
        self.exclude = [_glob_regex(source_id(p)) for p in exclude if p.strip()]

    def prunes(self, rel_dir: str) -> bool:
        """Whether an excluded pattern covers the whole folder ``rel_dir``."""
        rel_dir = source_id(rel_dir)
        return any(r.match(rel_dir) or r.match(rel_dir + "/") for r in self.exclude)

    def accepts(self, rel_file: str) -> bool:
        rel_file = source_id(rel_file)
        if any(r.match(rel_file) for r in self.exclude):
            return False
        return not self.include or any(r.match(rel_file) for r in self.include)

    def selects(self, rel_file: str) -> bool:
        """Whether a walk of the folder would yield the file at ``rel_file`` (posix form):
        no hidden or ignored part, no pruned folder on the way, a supported suffix, and
        accepted by the patterns."""
        parts = rel_file.split("/")
        if any(not p or p.startswith(".") or p in IGNORED_DIRS for p in parts):
            return False
        if any(self.prunes("/".join(parts[:n])) for n in range(1, len(parts))):
            return False
        return _supported(rel_file) and self.accepts(rel_file)


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


def _failure(path: str, reason: str) -> Failure:
    return Failure(source_id(path), reason)


def _link_failure(path: str, error: OSError) -> Failure:
    """Failure for a symlink whose target cannot be stat'ed (dangling, or a loop)."""
    try:
        target = source_id(os.readlink(path))
    except OSError:
        target = "?"
    if error.errno == errno.ELOOP:
        shown = source_id(path)
        return _failure(path, f"symlink loop: {shown} -> {target} never reaches a file")
    if isinstance(error, FileNotFoundError):
        return _failure(path, f"broken symlink: its target {target} does not exist")
    return _failure(path, _os_reason(error))


def _supported(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in SUPPORTED_SUFFIXES


_Entry = tuple[str, str, frozenset[tuple[int, int]]]  # path, path below the root, ancestors


class _Walk:
    """State of one :func:`walk` call: the filters and what has been seen already."""

    def __init__(self, filters: _Filter, max_bytes: int, *, list_unsupported: bool) -> None:
        self.filters = filters
        self.max_bytes = max_bytes
        self.list_unsupported = list_unsupported
        self.seen_files: set[tuple[int, int]] = set()
        self.seen_dirs: set[tuple[int, int]] = set()

    def file(self, path: str, st: os.stat_result) -> Iterator[FileRef | Failure]:
        if not stat.S_ISREG(st.st_mode):
            yield _failure(path, "not a regular file")
            return
        if st.st_size > self.max_bytes:
            limit, size = human_size(self.max_bytes), human_size(st.st_size)
            yield _failure(path, f"larger than the {limit} limit ({size})")
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen_files:  # the same file reached again, by a link or a second root
            return
        self.seen_files.add(key)
        yield FileRef(Path(path), st.st_size, st.st_mtime)

    def folder(self, root: str, root_st: os.stat_result) -> Iterator[FileRef | Failure]:
        """Depth-first with the entries of each folder in name order, so that the files come
        out sorted by their path components; entries that are symlinks wait until the rest
        is done, so that a file inside the root is named by its own path, not a link's.

        ``root`` is resolved; below it, paths are kept as reached (through links), so that
        what a root yields is named inside it."""
        root_key = (root_st.st_dev, root_st.st_ino)
        if root_key in self.seen_dirs:
            return
        self.seen_dirs.add(root_key)
        stack: list[_Entry] = []
        links: list[_Entry] = []
        yield from self._list(root, "", frozenset({root_key}), stack, links)
        while stack or links:
            if not stack:
                stack.extend(reversed(links))
                links.clear()
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
                    yield _failure(path, _os_reason(e))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if self.filters.prunes(rel):
                    continue
                if key in ancestors:
                    real = source_id(os.path.realpath(path))
                    yield _failure(
                        path, f"symlink loop: leads back to {real}, which contains it; skipped"
                    )
                    continue
                if key in self.seen_dirs:
                    continue
                self.seen_dirs.add(key)
                yield from self._list(path, rel, ancestors | {key}, stack, links)
            elif _supported(path) and self.filters.accepts(rel):
                yield from self.file(path, st)

    def _list(
        self,
        folder: str,
        rel: str,
        ancestors: frozenset[tuple[int, int]],
        stack: list[_Entry],
        links: list[_Entry],
    ) -> Iterator[Failure | Skipped]:
        names: list[tuple[str, bool]] = []
        unsupported: list[str] = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or name in IGNORED_DIRS:
                        continue
                    # Names without a supported suffix matter only if they are folders; a
                    # name with no suffix at all may also be a dangling link to a folder.
                    try:
                        wanted = _supported(name) or not os.path.splitext(name)[1] or entry.is_dir()
                        if wanted:
                            names.append((name, entry.is_symlink()))
                        elif self.list_unsupported and entry.is_file():
                            child = f"{rel}/{name}" if rel else name
                            if self.filters.accepts(child):
                                unsupported.append(os.path.join(folder, name))
                    except OSError:
                        continue
        except OSError as e:
            yield _failure(folder, _os_reason(e))
            return
        for path in sorted(unsupported):
            suffix = os.path.splitext(path)[1].lower()
            yield Skipped(source_id(path), f"unsupported file type {source_id(suffix)!r}")
        names.sort()
        children = [
            ((os.path.join(folder, name), f"{rel}/{name}" if rel else name, ancestors), link)
            for name, link in names
        ]
        stack.extend(child for child, link in reversed(children) if not link)
        links.extend(child for child, link in children if link)


def walk(
    paths: Sequence[str | Path],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
    list_unsupported: bool = False,
) -> Iterator[FileRef | Failure | Skipped]:
    """Files to ingest under `paths` (files or folders), sorted, deterministic.

    Folders are walked recursively, skipping hidden entries (names starting with ".") and
    :data:`IGNORED_DIRS`; only files with a :data:`SUPPORTED_SUFFIXES` suffix are yielded.
    A file named explicitly is yielded even when hidden, and yields a
    :class:`~rag.types.Skipped` when its type is unsupported; with ``list_unsupported``, so
    does every other file of an unsupported type that the patterns accept (hidden entries
    and ignored folders are never listed). `paths` are handled in the order given; below each folder the files come
    in order of their path components.

    ``include`` and ``exclude`` are glob patterns matched against the path relative to the
    walked folder in posix form (for a file named explicitly, its name): ``*.md``,
    ``docs/**/*.rst``, ``drafts/**``. ``*`` matches across ``/`` as in fnmatch, and ``**/``
    also matches no folder at all. An empty ``include`` takes every supported file;
    ``exclude`` wins over ``include``, and a folder it matches is not entered.

    Symlinks are followed; a link back into an enclosing folder, a dangling link and a file
    over ``max_bytes`` each yield a Failure, and the walk goes on. No file is yielded twice:
    a file reached both through links and not is named by its own path, else by the first
    link in walk order.

    Each named path is resolved (``os.path.realpath``); below a folder, paths are kept as
    reached, so a file reached through a link is named inside the folder, not where the
    link points. ``FileRef.path`` is that path as the operating system spells it;
    ``Failure.source`` the same, made valid text by :func:`source_id` (a named path that
    cannot be found: as given, made absolute).
    """
    if isinstance(paths, str | Path):
        raise TypeError("walk() takes a sequence of paths; wrap a single path in a list")
    state = _Walk(_Filter(include, exclude), max_bytes, list_unsupported=list_unsupported)
    for raw in paths:
        path = os.path.abspath(os.path.expanduser(os.fspath(raw)))
        try:
            os.lstat(path)
        except OSError as e:
            yield _failure(path, _os_reason(e))
            continue
        try:
            st = os.stat(path)
        except OSError as e:
            yield _link_failure(path, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from state.folder(os.path.realpath(path), st)
            continue
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in SUPPORTED_SUFFIXES:
            shown = f"'{suffix}'" if suffix else "(no suffix)"
            supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
            yield Skipped(source_id(path), f"unsupported file type {shown}; supported: {supported}")
            continue
        if state.filters.accepts(os.path.basename(path)):
            yield from state.file(os.path.realpath(path), st)


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


def load(ref: FileRef, *, formats: FormatOptions = DEFAULT_OPTIONS) -> list[Document]:
    """Read and parse one file. Raises IngestError(reason) with a short reason a user can act on.

    One Document per file, except for the formats that hold several (PDF pages, slides,
    groups of spreadsheet rows, e-book chapters, JSON records; docs/formats.md lists them).
    Every Document carries the metadata ``source``, ``title``, ``file_type``, ``mtime``,
    ``content_hash`` (sha256 of the bytes parsed) and ``size``; PDF pages add ``page`` and
    ``page_count``, text that was not UTF-8 adds ``encoding``, and each other format its
    own keys (``slide``, ``sheet``, ``chapter``, ``line``, ``from``, ...). ``format`` is
    "markdown" for Markdown and for the formats converted to it (reStructuredText, HTML,
    DOCX, PPTX, EPUB, notebooks), else "text". ``source`` is the path made valid text by
    :func:`source_id`, and so is a title taken from the file name.
    ``formats`` are the user's choices for the formats that take some
    (:class:`~connectors.formats.FormatOptions`).
    """
    path = Path(ref.path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise IngestError(f"unsupported file type {source_id(suffix)!r}")
    data, st = _read_stable(path)
    if not data:
        raise NothingToIndex("empty file")
    parsed = parse(suffix, data, source_id(path.stem), options=formats)
    source = source_id(str(path))
    common = {
        "source": source,
        "file_type": suffix[1:],
        "mtime": st.st_mtime,
        "content_hash": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    try:
        return [
            Document(
                source=source,
                text=p.text,
                metadata=check_metadata({**common, "title": p.title, **p.extra}),
                format=p.format,
            )
            for p in parsed
        ]
    except MetadataError as e:  # one file's oddity must not stop the ingest
        raise IngestError(f"unusable metadata: {e}") from e


# ---------------------------------------------------------------------------------------
# The source plugin


class FilesystemSource:
    """Files and folders on this machine, walked by :func:`walk` and read by :func:`load`.

    The ``filesystem`` source plugin.

    An item's id is the target resolved, then the file's path as reached below it (links
    below a target are not resolved: a file reached through one is named inside the target).
    A name that is not UTF-8 is written with its undecodable bytes escaped as ``\\xHH``
    (:func:`source_id`: ``café`` in Latin-1 is ``caf\\xe9``), so ids are valid text for every
    store; the file itself is still read under its real name. Two files whose ids would be
    equal (``caf\\xe9`` spelled out with a backslash, beside the Latin-1 ``café``) cannot both
    be named: the second is reported as a failure.

    A recorded id is covered (and removed by a full cleanup when the walk no longer yields
    it) exactly when a walk of the targets would yield it if the file were there: it lies
    below a target (or is one), and the include/exclude patterns, hidden and ignored folders
    and supported suffixes select it. So a narrower ``include`` leaves what it no longer
    selects in the collection instead of deleting it, and content reached through a link
    goes when the link does. A target that cannot be found covers nothing (an unmounted
    drive is not a deletion).
    """

    name = "filesystem"
    description = (
        "files and folders: text, Markdown, reST, HTML, PDF, DOCX, PPTX, XLSX, CSV, EPUB, "
        "Jupyter notebooks, JSON, JSONL, e-mail (.eml)"
    )
    #: The format options (``--json-field``, ``--notebook-outputs``); see
    #: :mod:`connectors.formats`.
    options: ClassVar[dict[str, str]] = dict(FORMAT_OPTIONS)

    def __init__(self, options: SourceOptions) -> None:
        if not options.targets:
            raise ConfigError("name at least one file or folder to ingest")
        for target in options.targets:
            if not os.path.lexists(os.path.expanduser(os.fspath(target))):
                raise ConfigError(f"{source_id(os.fspath(target))}: no such file or directory")
        self._options = options
        self._formats = format_options(options)  # a bad value fails here, before any work
        self._filter = _Filter(options.include, options.exclude)  # bad patterns fail here
        real = [os.path.realpath(os.path.abspath(os.path.expanduser(t))) for t in options.targets]
        self._roots = [(root, source_id(root)) for root in real]
        #: The real path of each id that :func:`source_id` changed, from the last scan.
        self._paths: dict[str, str] = {}

    def scan(self) -> Iterator[SourceItem | Failure | Skipped]:
        o = self._options
        self._paths = {}
        escaped: set[str] = set()  # ids with a "\\x" in them: where two names could meet
        for ref in walk(
            list(o.targets),
            include=o.include,
            exclude=o.exclude,
            max_bytes=o.max_bytes,
            list_unsupported=True,
        ):
            if isinstance(ref, Failure | Skipped):
                yield ref
                continue
            path = str(ref.path)
            ident = source_id(path)
            if "\\x" in ident or "\\u" in ident:
                if ident in escaped:
                    yield Failure(
                        ident,
                        "another file has the same name once bytes that are not UTF-8 are "
                        "shown as \\xHH; rename one of them",
                    )
                    continue
                escaped.add(ident)
                if ident != path:
                    self._paths[ident] = path
            yield SourceItem(ident, ref.size, ref.mtime)

    def load(self, item: SourceItem) -> list[Document]:
        ref = FileRef(Path(self._path(item.id)), item.size, item.mtime)
        return load(ref, formats=self._formats)

    def covers(self, source_id: str) -> bool:
        for root, shown in self._roots:
            if source_id == shown:
                rel = os.path.basename(root)
                return os.path.lexists(root) and self._filter.accepts(rel)
            prefix = shown.rstrip(os.sep) + os.sep
            if source_id.startswith(prefix):
                rel = source_id[len(prefix) :].replace(os.sep, "/")
                return os.path.isdir(root) and self._filter.selects(rel)
        return False

    def locate(self, source_id: str) -> SourceItem | None:
        try:
            st = os.stat(self._path(source_id))
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return SourceItem(source_id, st.st_size, st.st_mtime)

    def _path(self, ident: str) -> str:
        """The real path of the file with id ``ident``: the one the last scan found, else
        the id's escapes read back (or the id as it is, when a file has that name)."""
        if ident in self._paths:
            return self._paths[ident]
        path = _os_path(ident)
        if path != ident and not os.path.lexists(path) and os.path.lexists(ident):
            return ident
        return path
