"""Connectors turn sources into :class:`rag.types.Document` s; each is a source plugin
(:mod:`rag.source`) declared in the ``ragkit.sources`` entry-point group.

Today: the filesystem (:class:`connectors.filesystem.FilesystemSource`), built on
:func:`~connectors.filesystem.walk` (what to read) and :func:`~connectors.filesystem.load`
(read one); both report a bad source instead of raising anything but
:class:`rag.errors.IngestError`.
"""

from connectors.filesystem import (
    IGNORED_DIRS,
    SUPPORTED_SUFFIXES,
    FileRef,
    FilesystemSource,
    load,
    walk,
)

__all__ = ["IGNORED_DIRS", "SUPPORTED_SUFFIXES", "FileRef", "FilesystemSource", "load", "walk"]
