"""The source contract: what the ingestion pipeline reads documents from.

A source is a plugin of the ``ragkit.sources`` entry-point group (ragkit's own
``filesystem``; web sites, git repositories and SQL tables plug in the same way). It is
built from :class:`SourceOptions` and does three things:

* :meth:`Source.scan` lists what is there now, cheaply: one :class:`SourceItem` per unit to
  index (a file, a page, a row set), a :class:`~rag.types.Failure` for something it
  cannot read, or a :class:`~rag.types.Skipped` for something it will not read (a file type
  it has no parser for). Items carry a size and a modification time, so an unchanged item costs
  nothing: the pipeline compares them with what it recorded and does not read it.
* :meth:`Source.load` reads one item into documents, raising
  :class:`~rag.errors.IngestError` with a reason a user can act on, or
  :class:`~rag.errors.NothingToIndex` when the item holds no text (it is then skipped).
* :meth:`Source.covers` says whether a recorded item belongs to what this source spans,
  so that a full cleanup removes what disappeared from it and nothing else; and
  :meth:`Source.locate` finds a recorded item again by its id (when a damaged collection
  is rebuilt from its records).

Item ids are what chunks record as their ``source``: stable, unique within the collection,
valid Unicode (for files, the resolved folder given plus the path as walked below it; see
:mod:`connectors.filesystem`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from rag.types import Document, Failure, Skipped


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One unit a source can read, with what tells whether it changed."""

    id: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """What to read: the targets (paths, URLs, ...) and the user's selection of them."""

    targets: tuple[str, ...]
    #: Glob patterns over an item's path relative to its target; empty takes everything.
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: Items larger than this are reported as failures, not read.
    max_bytes: int = 50 * 2**20


@runtime_checkable
class Source(Protocol):
    """Documents from somewhere; see the module docstring. Constructed as
    ``SourceClass(options)``."""

    name: ClassVar[str]
    #: One line for ``rag plugins``.
    description: ClassVar[str]

    def scan(self) -> Iterator[SourceItem | Failure | Skipped]:
        """Every item there is now, in a deterministic order, each id once."""
        ...

    def load(self, item: SourceItem) -> list[Document]:
        """The item's documents (each with ``source`` = ``item.id`` in its metadata)."""
        ...

    def covers(self, source_id: str) -> bool:
        """Whether a recorded item ``source_id`` lies within what this source spans."""
        ...

    def locate(self, source_id: str) -> SourceItem | None:
        """The item recorded as ``source_id``, or ``None`` when it no longer exists."""
        ...


def open_source(name: str, options: SourceOptions) -> Source:
    """The source plugin ``name`` (see :mod:`rag.plugins`) over ``options``."""
    from rag import plugins

    cls = plugins.load("sources", name)
    return cls(options)


def targets(paths: Sequence[object]) -> tuple[str, ...]:
    """Targets as strings (paths may be ``Path`` objects)."""
    if isinstance(paths, str | bytes):
        raise TypeError("targets are a sequence; wrap a single path in a list")
    return tuple(str(p) for p in paths)
