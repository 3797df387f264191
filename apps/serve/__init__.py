"""ragkit as a service: ``rag serve`` (an OpenAI-compatible API, search and embeddings over
every collection of a data directory, behind API keys and limits) and ``rag mcp`` (the same
collections as MCP tools). Needs the ``serve`` extra."""
