"""Connectors turn sources (today: files and folders) into :class:`rag.types.Document` s.

The contract the ingestion pipeline relies on is :func:`walk` (what to read) and
:func:`load` (read one); both report a bad source instead of raising anything but
:class:`rag.errors.IngestError`.
"""

from connectors.filesystem import IGNORED_DIRS, SUPPORTED_SUFFIXES, FileRef, load, walk

__all__ = ["IGNORED_DIRS", "SUPPORTED_SUFFIXES", "FileRef", "load", "walk"]
