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

Two optional class attributes let a source take part in the command line without the core
knowing it:

* ``options``: a mapping of the source's own option names to one line of help each
  (``{"depth": "links to follow from each start page"}``). ``rag ingest`` offers each as a
  flag (``--depth``) and as ``--source-opt depth=2``; the values reach the source as
  :attr:`SourceOptions.params` (strings, parsed by the source). Giving a source an option it
  does not declare is a :class:`~rag.errors.ConfigError` (:func:`open_source` checks).
* ``claims(target) -> bool`` (a classmethod): whether a target is this source's to read
  (``https://...`` for a web source). Without ``--source``, :func:`pick_source` takes the
  source that claims every target, and the filesystem source otherwise.

A source that keeps state between runs (HTTP validators of the pages it fetched, say) keeps
it in :attr:`SourceOptions.state_dir`, a folder inside the collection that ingestion gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from rag.errors import ConfigError
from rag.types import Document, Failure, Skipped

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One unit a source can read, with what tells whether it changed."""

    id: str
    size: int
    #: A number that changes when the item changes: a file's modification time, or another
    #: change token of the source's (kept as a float, compared for equality only).
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
    #: The source's own options, as ``(name, value)`` strings (see the module docstring).
    params: tuple[tuple[str, str], ...] = ()
    #: A folder the source may keep state in between runs (``None``: keep none).
    state_dir: str | None = None

    def param(self, name: str, default: str | None = None) -> str | None:
        """The value given for the source option ``name`` (the last one), or ``default``."""
        found = default
        for key, value in self.params:
            if key == name:
                found = value
        return found


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
    declared = source_options(cls)
    unknown = sorted({key for key, _ in options.params if key not in declared})
    if unknown:
        accepted = ", ".join(sorted(declared)) or "none"
        raise ConfigError(
            f"the {name} source takes no option {', '.join(unknown)} (its options: {accepted})"
        )
    return cls(options)


def source_options(cls: type) -> Mapping[str, str]:
    """The options a source class declares (name -> help), empty when it declares none."""
    declared = getattr(cls, "options", None)
    return dict(declared) if isinstance(declared, Mapping) else {}


def pick_source(targets: Sequence[str]) -> str:
    """The source plugin for ``targets`` when none is named: the one whose ``claims``
    accepts every target, else ``filesystem``. Two sources claiming them is an error."""
    from rag import plugins

    claimed = []
    for name in plugins.names("sources"):
        plugin = plugins.get("sources", name)
        if not plugin.installed:
            continue
        try:
            cls = plugin.load()
        except Exception as e:  # a broken plugin is reported when named, not here
            logger.warning("the %s source could not be loaded: %s", name, e)
            continue
        claims = getattr(cls, "claims", None)
        if callable(claims) and targets and all(claims(t) for t in targets):
            claimed.append(name)
    if len(claimed) > 1:
        raise ConfigError(f"{', '.join(claimed)} all read {targets[0]!r}: choose one with --source")
    return claimed[0] if claimed else "filesystem"


def targets(paths: Sequence[object]) -> tuple[str, ...]:
    """Targets as strings (paths may be ``Path`` objects)."""
    if isinstance(paths, str | bytes):
        raise TypeError("targets are a sequence; wrap a single path in a list")
    return tuple(str(p) for p in paths)
