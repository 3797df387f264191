"""The request and response models of the OpenAI-compatible routes
(:mod:`apps.serve.openai_api`): what ``/openapi.json`` declares, and what every request is
checked against (fields a model does not declare are refused)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The most passages one request may ask for, inputs one embeddings request may hold, and
#: messages one conversation may hold (the gateway limits the body's bytes as well).
MAX_K = 100
MAX_INPUTS = 2048
MAX_MESSAGES = 512
Mode = Literal["dense", "bm25", "hybrid"]


# --- errors -------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, which OpenAI clients parse into their exceptions."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


#: What any route may answer besides 200: its own checks and the gateway's.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("malformed request: a field, the filter, or the conversation"),
    401: _error("no valid API key (where the server has keys)"),
    403: _error("the key may not use this collection, or a route refused the question"),
    404: _error("no such collection (model)"),
    413: _error("request body too large"),
    429: _error("rate limit reached"),
    500: _error("internal error"),
    502: _error("the generator failed"),
    503: _error("overloaded, not ready, or the generator cannot be loaded"),
}


# --- request models -----------------------------------------------------------------------------


class RetrievalOptions(BaseModel):
    """ragkit's retrieval options, extension fields of a chat or search request."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(
        None, ge=1, le=MAX_K, description="how many passages (default: the server's, 5)"
    )
    mode: Mode | None = Field(None, description="dense (default), bm25, or hybrid (both, fused)")
    where: dict[str, Any] | str | None = Field(
        None,
        description='a metadata filter in ragkit\'s filter language, e.g. {"page": {"$gte": 2}} '
        "(as an object or JSON text); a malformed one is a 400",
    )
    mmr: bool = Field(False, description="re-rank the passages for diversity")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message. Fields OpenAI clients echo back on assistant messages (``refusal``,
    ``tool_calls: null``...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatRequest(RetrievalOptions):
    """A chat completion request. ``model`` names the collection. The last message must be
    the user's question; earlier user and assistant messages are the conversation, from
    which a follow-up question is made standalone before it is searched for (as ``rag
    chat`` does). System and developer messages are accepted and not used: ragkit answers
    from the passages with its own prompt.

    Honoured: ``model``, ``messages``, ``stream``, ``stream_options.include_usage`` and
    ragkit's ``k``, ``mode``, ``where``, ``mmr``. Accepted and NOT used (the answer comes
    from the server's generator with the server's settings, ``--max-tokens`` included):
    ``temperature``, ``top_p``, ``max_tokens``, ``max_completion_tokens``,
    ``presence_penalty``, ``frequency_penalty``, ``seed``, ``stop``, ``user``. ``n`` may
    only be 1 and ``logprobs`` only false; any other field is a 400."""

    model: str = Field(pattern=r"\S", description="a collection: ragkit/<name> (GET /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="accepted, not used")
    top_p: float | None = Field(None, ge=0, le=1, description="accepted, not used")
    max_tokens: int | None = Field(None, ge=1, description="accepted, not used")
    max_completion_tokens: int | None = Field(None, ge=1, description="accepted, not used")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="accepted, not used")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="accepted, not used")
    seed: int | None = Field(None, description="accepted, not used")
    stop: str | list[str] | None = Field(None, description="accepted, not used")
    user: str | None = Field(None, description="accepted, not used")
    n: int = Field(1, ge=1, le=1, description="one answer per request")
    logprobs: Literal[False] | None = Field(None, description="not available")


class SearchRequest(RetrievalOptions):
    model: str = Field(pattern=r"\S", description="a collection: ragkit/<name> (GET /v1/models)")
    query: str = Field(pattern=r"\S", description="what to look for")


class EmbeddingRequest(BaseModel):
    """Embeddings by the collection's embedder. Token arrays as ``input`` are not
    supported; ``dimensions`` must be the model's own; ``user`` is accepted, not used."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=r"\S", description="a collection: ragkit/<name> (GET /v1/models)")
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="base64: little-endian float32 bytes (what the openai package asks for)",
    )
    dimensions: int | None = Field(None, ge=1, description="must be the model's own dimension")
    user: str | None = Field(None, description="accepted, not used")


# --- response models ----------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragkit"
    # ragkit's extension fields
    collection: str
    store: str
    chunks: int
    sources: int
    embed_model: str
    dim: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SourceOut(BaseModel):
    """Passage ``[index]`` of the answer."""

    index: int
    id: str
    source: str
    title: str | None
    heading: str | None
    page: int | None
    score: float
    cited: bool = Field(description="whether the answer cites it")
    text: str = Field(description="the passage's text")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"]
    logprobs: None = None


class Usage(BaseModel):
    """Always zeros: ragkit does not count the generator's tokens (the local model's
    tokenizer is not exposed, the extractive generator has none)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    # ragkit's extension fields
    sources: list[SourceOut]
    citations: list[int]
    query: str = Field(description="what was searched: the question, or its standalone rewrite")
    grounding: str
    route: str
    route_reason: str
    generator: str


class HitOut(BaseModel):
    id: str
    text: str
    score: float
    source: str
    metadata: dict[str, str | int | float | bool]


class SearchResponse(BaseModel):
    """What ``rag search --json`` prints."""

    query: str
    hits: list[HitOut]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    """The embedder's own token counts."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
