"""Saving uploaded files inside the data directory, safely. No Streamlit here.

Uploads go to ``<data dir>/uploads/<collection>/``. A file name from the browser is only a
hint: directories are stripped, ``..``, hidden names, control characters and unsupported
types are refused, odd characters become ``_``, and the final path is checked to lie in the
upload folder. Sizes are checked before anything is written; a file is written to a
temporary name and renamed, so a half-written upload is never ingested.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: Longest file name kept (characters, suffix included).
MAX_NAME = 120
_ODD = re.compile(r"[^\w.\- ()+,]+", re.UNICODE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UploadError(ValueError):
    """An uploaded file was refused; the message says why, in words a user can act on."""


class Upload(Protocol):
    """What Streamlit's ``UploadedFile`` offers (and what tests fake)."""

    name: str
    size: int

    def getvalue(self) -> bytes: ...


@dataclass
class SaveResult:
    """Files written (or found already present with the same content) and those refused."""

    saved: list[Path] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name given, reason)


def upload_dir(data_dir: Path, collection: str) -> Path:
    """Where uploads for ``collection`` are kept."""
    # The collection name is validated by Settings (letters, digits, '_' and '-').
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", collection):
        raise UploadError(f"collection name {collection!r} cannot name an upload folder")
    return Path(data_dir) / "uploads" / collection


def safe_name(name: str, suffixes: Iterable[str]) -> str:
    """A file name fit to be created in the upload folder, or :class:`UploadError`.

    Refused: empty names, any ``..`` path component, hidden names (leading dot), control
    characters, and suffixes outside ``suffixes``. Directories are stripped (both ``/`` and
    ``\\``); other odd characters are replaced by ``_``.
    """
    raw = unicodedata.normalize("NFC", name or "")
    if _CONTROL.search(raw):
        raise UploadError(f"{name!r}: the file name contains control characters")
    parts = re.split(r"[\\/]+", raw)
    if any(p.strip() == ".." for p in parts):
        raise UploadError(f"{name!r}: file names must not contain '..'")
    base = parts[-1].strip()
    if not base or base in (".", ".."):
        raise UploadError(f"{name!r}: not a file name")
    if base.startswith("."):
        raise UploadError(f"{name!r}: hidden files are not accepted")
    stem, suffix = os.path.splitext(base)
    suffix = suffix.lower()
    allowed = {s.lower() for s in suffixes}
    if suffix not in allowed:
        raise UploadError(
            f"{name!r}: unsupported file type {suffix or '(none)'}; accepted: "
            + ", ".join(sorted(allowed))
        )
    stem = _ODD.sub("_", stem).strip(" ._") or "upload"
    return stem[: MAX_NAME - len(suffix)] + suffix


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _free_path(folder: Path, name: str, data: bytes) -> tuple[Path, bool]:
    """A path for ``name`` in ``folder``: the existing file when it holds the same bytes
    (``True``: nothing to write), else the first free ``stem-N.ext``."""
    stem, suffix = os.path.splitext(name)
    want = _digest(data)
    for n in range(1000):
        candidate = folder / (name if n == 0 else f"{stem}-{n}{suffix}")
        if not candidate.exists():
            return candidate, False
        if (
            candidate.is_file()
            and candidate.stat().st_size == len(data)
            and _digest(candidate.read_bytes()) == want
        ):
            return candidate, True
    raise UploadError(f"{name!r}: too many files of that name in the upload folder")


def save_uploads(
    files: Iterable[Upload],
    folder: Path,
    *,
    max_bytes: int,
    suffixes: Iterable[str],
) -> SaveResult:
    """Write ``files`` into ``folder`` (created when missing). Each file is checked on its
    own; refused files are listed with the reason and the others are still saved."""
    suffixes = list(suffixes)
    result = SaveResult()
    folder = Path(folder)
    for f in files:
        given = getattr(f, "name", "") or ""
        try:
            name = safe_name(given, suffixes)
            size = int(getattr(f, "size", -1))
            if size < 0 or size > max_bytes:
                raise UploadError(
                    f"{given!r}: {_mb(size)} is over the upload limit of {_mb(max_bytes)}"
                )
            data = f.getvalue()
            if len(data) > max_bytes:  # the declared size is the browser's word
                raise UploadError(
                    f"{given!r}: {_mb(len(data))} is over the upload limit of {_mb(max_bytes)}"
                )
            folder.mkdir(parents=True, exist_ok=True)
            root = folder.resolve()
            path, present = _free_path(folder, name, data)
            if path.resolve().parent != root:
                raise UploadError(f"{given!r}: the file would land outside the upload folder")
            if not present:
                _write_atomic(path, data)
            result.saved.append(path)
        except UploadError as e:
            result.refused.append((given, str(e)))
        except OSError as e:
            result.refused.append((given, f"{given!r}: could not be saved: {e.strerror or e}"))
    return result


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mb(n: int) -> str:
    if n < 0:
        return "an unknown size"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"
