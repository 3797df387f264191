"""ragkit under LangChain: a ``VectorStore`` over any ragkit store, a ``BaseRetriever`` over
a collection, and ragkit's embedders as ``Embeddings`` (the ``langchain`` extra,
``pip install 'ragkit[langchain]'``). See docs/integrations.md.

Imports are absolute (``langchain_core``), so this package, ``apps.langchain``, never stands
in for the ``langchain`` distribution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["RagkitEmbeddings", "RagkitRetriever", "RagkitVectorStore"]

_LAZY = {
    "RagkitEmbeddings": "apps.langchain.embeddings",
    "RagkitRetriever": "apps.langchain.retriever",
    "RagkitVectorStore": "apps.langchain.vectorstore",
}

if TYPE_CHECKING:
    from apps.langchain.embeddings import RagkitEmbeddings
    from apps.langchain.retriever import RagkitRetriever
    from apps.langchain.vectorstore import RagkitVectorStore


def __getattr__(name: str) -> Any:
    # Lazy, so that the metadata codec imports without langchain-core; a missing extra
    # fails here with the install command.
    if name not in _LAZY:
        raise AttributeError(f"module 'apps.langchain' has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(_LAZY[name])
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("langchain_core", "pydantic"):
            from rag.errors import MissingDependencyError

            raise MissingDependencyError(f"ragkit's {name}", e.name, "langchain") from e
        raise
    return getattr(module, name)
