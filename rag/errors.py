"""The error tree. Everything ragkit raises on purpose derives from :class:`RagError`.

Driver errors are wrapped with ``raise ... from e`` and name the backend and the object
involved, so that the CLI can print one line that is enough to act on.
"""

from __future__ import annotations


class RagError(Exception):
    """Root of every error ragkit raises deliberately."""


class ConfigError(RagError):
    """A setting is missing, malformed or inconsistent."""


class MissingDependencyError(ConfigError):
    """An optional package is needed for the requested feature."""

    def __init__(self, feature: str, package: str, extra: str, *, dist: str = "ragkit") -> None:
        super().__init__(
            f"{feature} needs the package {package!r}, which is not installed: "
            f"pip install '{dist}[{extra}]'"
        )
        self.feature = feature
        self.package = package
        self.extra = extra


class PluginError(ConfigError):
    """A plugin is declared twice, cannot be loaded, or is not what its group expects."""


class PluginConflictError(PluginError):
    """Two installed packages declare the same plugin name in one group."""


class ContractError(RagError, ValueError):
    """An argument breaks a contract: a vector of the wrong shape, a duplicate chunk id,
    ``k`` out of range. Also a ``ValueError``, which is what callers of a store expect."""


class MetadataError(ContractError):
    """Metadata breaks the rule every store applies alike (see :mod:`rag.contract`)."""


class FilterError(RagError, ValueError):
    """A metadata filter is malformed, or a backend cannot express one of its operators."""


class StoreError(RagError):
    """A vector store operation failed."""


class StoreCorruptedError(StoreError):
    """The engine's files are damaged (an embedded engine killed mid-write). An ingest
    rebuilds the collection from its recorded sources and the embedding cache."""


class CollectionNotFoundError(StoreError):
    """The named collection does not exist."""


class DimensionMismatchError(StoreError, ValueError):
    """Vectors of one dimension were written to or searched in a collection of another."""


class EmbedderMismatchError(ConfigError):
    """A collection is opened with an embedder other than the one that built it."""


class CapabilityError(StoreError):
    """A backend was asked for something it declares it cannot do."""


class LockedError(StoreError):
    """Another process holds the collection's write lock."""


class IngestError(RagError):
    """A document could not be read, parsed or indexed."""


class NothingToIndex(IngestError):
    """A document was read and holds no text to index (an empty file): it is skipped, not
    failed."""


class EmbeddingError(RagError):
    """The embedding model could not be loaded or failed to encode."""


class GenerationError(RagError):
    """The answer generator could not be loaded or failed to answer."""


class RouteRefused(RagError):
    """The generator router refused to answer: private passages would have gone to a
    generator that is not local (see :mod:`rag.routing`). Nothing was sent anywhere."""
