"""ragkit under LlamaIndex: a retriever over a ragkit collection (the ``llamaindex`` extra,
``pip install 'ragkit[llamaindex]'``). See docs/integrations.md for why there is no
LlamaIndex vector store over a ragkit store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["RagkitRetriever"]

if TYPE_CHECKING:
    from apps.llamaindex.retriever import RagkitRetriever


def __getattr__(name: str) -> Any:
    if name != "RagkitRetriever":
        raise AttributeError(f"module 'apps.llamaindex' has no attribute {name!r}")
    try:
        from apps.llamaindex.retriever import RagkitRetriever
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "llama_index":
            from rag.errors import MissingDependencyError

            raise MissingDependencyError(
                "ragkit's LlamaIndex retriever", e.name, "llamaindex"
            ) from e
        raise
    return RagkitRetriever
