"""The MCP tools over a :class:`~apps.serve.service.Service`: ``search``, ``ask``,
``list_collections`` and ``get_chunk``, all read-only, registered on an ``MCPServer`` by
:func:`add_tools` (:func:`apps.serve.mcp_server.build_mcp` is the public entry).

Every tool answers structured content (its output schema is published) and the same JSON as
text. A mistake in the arguments, an unknown collection, a malformed filter or anything
else ragkit reports as a ``RagError`` comes back as a tool error (``isError``) with a
message written for the agent that made the call; anything else is logged with its
traceback on the server and reported as a failed tool call.

Imported only when the server is built: ``mcp`` takes half a second to import, and
``rag --help`` loads every command's module.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field, WithJsonSchema
from typing_extensions import TypedDict  # pydantic needs it below Python 3.12

from apps.serve.service import UnknownCollection
from rag.config import RETRIEVAL_MODES
from rag.errors import RagError

if TYPE_CHECKING:
    from apps.serve.service import CollectionRef, Service
    from rag.collection import Collection
    from rag.generation import Generator
    from rag.types import Answer

#: The most passages one call may ask for: an agent's context is the scarce resource.
MAX_K = 50
#: Where :func:`apps.serve.mcp_server.mount_mcp` leaves the HTTP caller in the ASGI scope:
#: an object with ``may_see(collection_name) -> bool``, or ``None`` for every collection.
CALLER_SCOPE_KEY = "ragkit.mcp.caller"

INSTRUCTIONS = """\
ragkit answers from document collections that were ingested on this machine. Call \
list_collections to see them, search to read the passages that best match a query (with \
their source files and ids), ask for an answer written from those passages with numbered \
citations, and get_chunk to read one passage in full by its id. Every tool is read-only. \
Name a collection by its id (ragkit/<name>) or its name; without one, the server's default \
collection is used."""

# --- what the tools return ----------------------------------------------------------------------


class HitJson(TypedDict):
    """One passage: its chunk id, text, relevance score (higher is better), source file and
    metadata (heading, page, file_type, ...)."""

    id: str
    text: str
    score: float
    source: str
    metadata: dict[str, Any]


class SearchResult(TypedDict):
    """The query and the best passages, best first (what ``rag search --json`` prints)."""

    query: str
    hits: list[HitJson]


class AskResult(TypedDict):
    """An answer written from the collection's passages. Passage ``[n]`` in the answer is
    ``sources[n-1]``; ``citations`` lists the numbers the answer cites."""

    answer: str
    citations: list[int]
    sources: list[HitJson]
    citations_by: str
    left_out: int
    grounding: str
    removed: int
    query: str
    route: str
    route_reason: str
    generator: str
    model: str
    collection: str


class CollectionInfo(TypedDict):
    """One collection: its id (what the tools' ``collection`` argument takes), name, vector
    store, chunk and source-file counts, embedding model and dimension, and whether it is
    the default."""

    id: str
    name: str
    store: str
    chunks: int
    sources: int
    embed_model: str
    dim: int
    default: bool


class CollectionList(TypedDict):
    """The collections, and the id of the one used when a tool names none (null when the
    tools must be told)."""

    collections: list[CollectionInfo]
    default: str | None


class ChunkResult(TypedDict):
    """One passage in full: its id, text, source file, metadata and collection id."""

    id: str
    text: str
    source: str
    metadata: dict[str, Any]
    collection: str


# --- the arguments, as the agent sees them ---------------------------------------------------------

# k and mode publish their bounds and choices in the schema but are checked here, so that a
# wrong value gets one plain sentence rather than a pydantic validation report.
Query = Annotated[str, Field(description="What to look for, in natural language or keywords.")]
Question = Annotated[str, Field(description="The question to answer from the collection.")]
K = Annotated[
    int,
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_K}),
    Field(description=f"How many passages to return (1-{MAX_K})."),
]
OptionalK = Annotated[
    int | None,
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_K}),
    Field(
        description=f"How many passages to retrieve for the answer (1-{MAX_K}; "
        "default: the server's setting, 5 unless configured)."
    ),
]
CollectionArg = Annotated[
    str | None,
    Field(
        description="The collection's id (ragkit/<name>, from list_collections) or name. "
        "Default: the server's default collection."
    ),
]
Mode = Annotated[
    str | None,
    WithJsonSchema({"type": "string", "enum": list(RETRIEVAL_MODES)}),
    Field(
        description="dense (by meaning, the default), bm25 (by keywords: names, codes, rare "
        "words) or hybrid (both, fused)."
    ),
]
Where = Annotated[
    dict[str, Any] | str | None,
    Field(
        description="A metadata filter (a JSON object): equality "
        '{"file_type": "md"}, operators $eq $ne $gt $gte $lt $lte $in $nin '
        '({"page": {"$gte": 2}}, {"source": {"$in": ["/path/a.md", "/path/b.md"]}}), '
        "combinators $and $or $not. Fields: source (the file path search returns), title, "
        "file_type, heading, page, mtime (a date) and whatever else a hit's metadata shows."
    ),
]
ChunkId = Annotated[str, Field(description="A chunk id, as search or ask returned it.")]

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

SEARCH = """\
Find the passages of a document collection that best match a query. Returns {"query", \
"hits"}: up to k passages, best first, each with its chunk id, full text, score (higher is \
better), source file path and metadata (heading, page, file type). Use it to read what the \
documents say before answering, or to find which file covers a topic."""

ASK = """\
Answer a question from a document collection: retrieves the best passages and writes an \
answer from them alone, citing them as [1], [2], ... Returns {"answer", "citations", \
"sources", ...}: passage [n] is sources[n-1] (with its id, text, source file and \
metadata), citations lists the numbers the answer cites, and grounding says whether every \
sentence is supported by a passage ("grounded"), the answer fell back to quoting the \
passages ("fell back"), or the passages do not answer the question ("abstained"). Prefer \
search when you want to read the passages and answer yourself."""

LIST = """\
List the document collections this server can search: for each its id (what the other \
tools' collection argument takes), name, vector store, number of chunks and source files, \
embedding model, and whether it is the default one used when no collection is named."""

GET_CHUNK = """\
Read one passage in full by its chunk id (from search or ask results): returns its id, \
text, source file path, metadata (heading, page, file type, ...) and collection id. A tool \
error when the collection has no chunk with that id."""


# --- the tools ----------------------------------------------------------------------------------


class CollectionTools:
    """What the tools share: the service, the default collection, and one generator per
    collection (loaded on its first question and kept: a local model takes seconds to
    load)."""

    def __init__(self, service: Service, *, default_collection: str | None) -> None:
        self.service = service
        self.default_collection = default_collection
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str], _Slot] = {}

    # -- which collection --------------------------------------------------------------------

    def visible(self, may_see: Callable[[str], bool] | None) -> list[CollectionRef]:
        refs = self.service.refs()
        return refs if may_see is None else [r for r in refs if may_see(r.name)]

    def resolve(self, name: str | None, may_see: Callable[[str], bool] | None) -> CollectionRef:
        """The collection ``name`` names, else the default one; a ``ToolError`` that lists
        the collections the caller may use when there is none."""
        if name is not None and name.strip():
            return self._named(name.strip(), may_see)
        if self.default_collection is not None:
            return self._named(self.default_collection, may_see)
        refs = self.visible(may_see)
        if len(refs) == 1:
            return refs[0]
        if not refs:
            raise ToolError(
                "there is no collection to search: this data directory holds none yet "
                "(ingest documents with `rag ingest` first)"
            )
        raise ToolError(
            "name a collection: this server has no default one and holds "
            f"{len(refs)} ({', '.join(r.id for r in refs)})"
        )

    def _named(self, name: str, may_see: Callable[[str], bool] | None) -> CollectionRef:
        try:
            ref = self.service.resolve(name)
        except UnknownCollection as e:
            if may_see is None:
                raise ToolError(str(e)) from None
            ref = None
        if ref is None or (may_see is not None and not may_see(ref.name)):
            # The message lists only what this caller may use.
            known = ", ".join(r.id for r in self.visible(may_see)) or "none"
            raise ToolError(f"no collection {name!r} that you may use (there are: {known})")
        return ref

    def default_id(self, may_see: Callable[[str], bool] | None) -> str | None:
        try:
            return self.resolve(None, may_see).id
        except ToolError:
            return None

    # -- asking ------------------------------------------------------------------------------

    def ask(self, ref: CollectionRef, question: str, **retrieval: Any) -> Answer:
        from rag.generation import load_generator
        from rag.routing import router_for

        col = self.service.collection(ref)
        with self._lock:
            slot = self._slots.setdefault((ref.store, ref.name), _Slot())
        # One question at a time per collection: a local model answers one at a time, and
        # this keeps its generator from being loaded twice.
        with slot.lock:
            search = functools.partial(self.service.search, ref)  # the batched search
            if router_for(col) is not None:
                # a routes file picks per question
                return col.ask(question, search=search, **retrieval)
            if slot.generator is None:
                slot.generator = load_generator(col.settings, embed=col.embedder.embed)
            return col.ask(question, generator=slot.generator, search=search, **retrieval)


class _Slot:
    """A collection's generator and the lock its questions take turns on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generator: Generator | None = None


def add_tools(server: MCPServer, tools: CollectionTools) -> None:
    """Registers the four read-only tools on ``server``."""

    def search(
        query: Query,
        ctx: Context,
        k: K = 5,
        collection: CollectionArg = None,
        mode: Mode = None,
        where: Where = None,
    ) -> SearchResult:
        with _errors():
            args = _retrieval(k, mode, where)
            text = _text(query, "query")
            col, _ = _open(tools, collection, ctx)
            hits = col.search(text, **args)
            return {"query": query, "hits": [h.to_json() for h in hits]}

    def ask(
        question: Question,
        ctx: Context,
        collection: CollectionArg = None,
        k: OptionalK = None,
        mode: Mode = None,
        where: Where = None,
    ) -> AskResult:
        with _errors():
            args = _retrieval(k, mode, where)
            text = _text(question, "question")
            ref = tools.resolve(collection, _may_see(ctx))
            result = tools.ask(ref, text, **args).to_json()
            result.pop("timings", None)
            return {**result, "collection": ref.id}

    def list_collections(ctx: Context) -> CollectionList:
        with _errors():
            may_see = _may_see(ctx)
            default = tools.default_id(may_see)
            return {
                "collections": [
                    {
                        "id": r.id,
                        "name": r.name,
                        "store": r.store,
                        "chunks": r.chunks,
                        "sources": r.sources,
                        "embed_model": r.embed_model,
                        "dim": r.dim,
                        "default": r.id == default,
                    }
                    for r in tools.visible(may_see)
                ],
                "default": default,
            }

    def get_chunk(id: ChunkId, ctx: Context, collection: CollectionArg = None) -> ChunkResult:
        with _errors():
            chunk_id = _text(id, "chunk id")
            col, ref = _open(tools, collection, ctx)
            found = col.store.get([chunk_id])
            if not found:
                raise ToolError(
                    f"no chunk {chunk_id!r} in the collection {ref.id} (chunk ids come from "
                    "search or ask results of the same collection)"
                )
            chunk = found[0]
            return {
                "id": chunk.id,
                "text": chunk.text,
                "source": chunk.source,
                "metadata": dict(chunk.metadata),
                "collection": ref.id,
            }

    for fn, title, description in (
        (search, "Search the documents", SEARCH),
        (ask, "Ask the documents", ASK),
        (list_collections, "List the collections", LIST),
        (get_chunk, "Read a passage", GET_CHUNK),
    ):
        server.add_tool(
            fn, title=title, description=description, annotations=READ_ONLY, structured_output=True
        )


# --- helpers ------------------------------------------------------------------------------------


@contextmanager
def _errors() -> Iterator[None]:
    """ragkit's own errors, as tool errors the agent can read and act on."""
    try:
        yield
    except RagError as e:
        raise ToolError(str(e)) from e


def _text(value: str, what: str) -> str:
    if not value.strip():
        raise ToolError(f"the {what} is empty: say what to look for")
    return value


def _retrieval(k: int | None, mode: str | None, where: dict[str, Any] | str | None) -> dict:
    from rag.filters import parse

    if k is not None and not 1 <= k <= MAX_K:
        raise ToolError(f"k must be between 1 and {MAX_K}, got {k}")
    if mode is not None and mode not in RETRIEVAL_MODES:
        raise ToolError(f"unknown mode {mode!r}: choose dense, bm25 or hybrid")
    return {"k": k, "mode": mode, "where": parse(where)}


def _may_see(ctx: Context) -> Callable[[str], bool] | None:
    """The HTTP caller's collection check (:data:`CALLER_SCOPE_KEY`); ``None`` over stdio
    or when the server was mounted without one."""
    try:
        request = ctx.request_context.request
    except (AttributeError, LookupError, ValueError):
        return None
    scope = getattr(request, "scope", None)
    caller = scope.get(CALLER_SCOPE_KEY) if isinstance(scope, dict) else None
    return None if caller is None else caller.may_see


def _open(
    tools: CollectionTools, name: str | None, ctx: Context
) -> tuple[Collection, CollectionRef]:
    ref = tools.resolve(name, _may_see(ctx))
    return tools.service.collection(ref), ref
