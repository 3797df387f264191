"""Any OpenAI-compatible chat endpoint: OpenAI itself, vLLM, llama.cpp's server, Ollama,
LM Studio, ... through the ``openai`` package.

The endpoint is configured by the environment only (``OPENAI_BASE_URL``,
``OPENAI_API_KEY``; see :func:`rag.config.openai_endpoint`), the model by
``RAG_LLM_MODEL`` or, when the endpoint serves exactly one, by asking it.

An endpoint URL may carry credentials (``http://user:pass@host/v1``, a key in the query
string): it is shown only as :func:`redact_url` writes it, in every message and by every
face of ragkit, while requests use it whole. What an endpoint answers is shown only as a
short, cleaned reason (:func:`clean_reason`), never as its raw body.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

from rag.config import openai_endpoint
from rag.errors import ConfigError, GenerationError
from rag.generation.context import GeneratorContext, unused
from rag.generation.prompt import Message, build_messages, clean_rewrite, rewrite_messages
from rag.types import Hit

History = Sequence[tuple[str, str]]

#: The model used on OpenAI's own API when none is named.
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
OPENAI_URL = "https://api.openai.com/v1"
#: The longest reason from an endpoint that a message repeats (characters).
REASON_CHARS = 100

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# Terminal escape sequences (CSI and OSC), dropped whole from an endpoint's reasons.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")


def _parts(url: str) -> tuple[str, str, str, str, str]:
    """``url`` as (scheme and "//", authority, path, query, fragment), loosely: a URL
    without a scheme has its authority first."""
    rest, _, fragment = url.partition("#")
    rest, _, query = rest.partition("?")
    scheme, sep, tail = rest.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        scheme, sep, tail = "", "", rest
    end = min((i for i in (tail.find("/"), tail.find("\\")) if i >= 0), default=len(tail))
    return scheme + sep, tail[:end], tail[end:], query, fragment


def redact_url(url: str) -> str:
    """``url`` as ragkit shows it: the user-info (``user:pass@``), the query string and the
    fragment, where credentials travel, each replaced by ``***``
    (``http://***@host/v1?***``). Scheme, host, port and path are kept."""
    start, authority, path, query, fragment = _parts(url)
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return start + authority + path + ("?***" if query else "") + ("#***" if fragment else "")


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that :func:`redact_url` hides, longest first, for scrubbing them
    from text that quotes the URL (a driver's error message)."""
    _, authority, _, query, fragment = _parts(url)
    found = {query, fragment}
    for pair in query.split("&"):
        found |= {pair, pair.partition("=")[2]}
    if "@" in authority:
        info = authority.rpartition("@")[0]
        found |= {info, info.partition(":")[2]}
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def clean_reason(text: str, limit: int = REASON_CHARS) -> str:
    """A reason an endpoint gave, fit to repeat: terminal escapes and other control or
    format characters removed, whitespace collapsed to single spaces, at most ``limit``
    characters."""
    text = _ESCAPES.sub("", text)
    text = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")
    )
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class OpenAIGenerator:
    """Answers with a chat model behind an OpenAI-compatible HTTP API.

    ``model=None`` means ``gpt-4o-mini`` on OpenAI's API (``base_url=None``), or the one
    model an other endpoint lists at ``/v1/models``. ``model`` then holds the id the
    endpoint reports with its answers. Every failure of the endpoint is raised as
    ``GenerationError`` with a one-line reason.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None,
        *,
        base_url: str | None,
        api_key: str | None,
        max_tokens: int = 320,
        temperature: float = 0.0,
        timeout: float = 60,
    ) -> None:
        try:
            import openai
        except ImportError as e:  # a core dependency, but say so clearly if it is missing
            raise GenerationError(
                "the OpenAI generator needs the package 'openai', which is not installed: "
                "pip install openai"
            ) from e
        self._openai = openai
        #: The URL requests go to, whole: never shown (see ``endpoint``).
        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        #: The URL as messages show it, credentials hidden.
        self.endpoint = redact_url(self.base_url)
        self._secrets = url_secrets(self.base_url)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        # One retry: enough for a dropped connection, short enough to fail fast when the
        # server is down.
        try:
            self._client = openai.OpenAI(
                base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=1
            )
        except ValueError as e:  # httpx.InvalidURL: a bad port, an unclosed "[" ...
            raise self._fail(f"the endpoint URL {self.endpoint} is not valid: {e}") from e
        # Some newer OpenAI models reject max_tokens and temperature; learned on first use.
        self._use_max_completion_tokens = False
        if model is None:
            model = DEFAULT_OPENAI_MODEL if base_url is None else self._only_model()
        self.requested_model = model
        self.model = model

    def stream(
        self, question: str, sources: Sequence[Hit], *, history: History = ()
    ) -> Iterator[str]:
        # The endpoint's context size is unknown and usually large: no budget is applied.
        yield from self.chat(build_messages(question, sources, history))

    def rewrite_question(self, question: str, history: History) -> str:
        if not history:
            return question
        return clean_rewrite(
            "".join(self.chat(rewrite_messages(question, history), max_tokens=64)), question
        )

    def chat(self, messages: Sequence[Message], *, max_tokens: int | None = None) -> Iterator[str]:
        """Streams the reply to raw chat ``messages``."""
        limit = max_tokens or self.max_tokens
        try:
            try:
                response = self._create(messages, limit)
            except self._openai.BadRequestError as e:
                if "max_completion_tokens" not in str(e) or self._use_max_completion_tokens:
                    raise
                self._use_max_completion_tokens = True
                response = self._create(messages, limit)
            with response:
                for chunk in response:
                    if getattr(chunk, "model", None):
                        self.model = clean_reason(str(chunk.model))
                    for choice in chunk.choices or ():
                        content = choice.delta.content if choice.delta else None
                        if content:
                            yield content
        except self._openai.OpenAIError as e:
            raise self._error(e) from e

    def _create(self, messages: Sequence[Message], limit: int) -> Any:
        options: dict[str, Any] = (
            {"max_completion_tokens": limit}
            if self._use_max_completion_tokens
            else {"max_tokens": limit, "temperature": self.temperature}
        )
        return self._client.chat.completions.create(
            model=self.requested_model,
            messages=[dict(m) for m in messages],  # type: ignore[misc]
            stream=True,
            **options,
        )

    def _only_model(self) -> str:
        url = self.endpoint
        try:
            ids = sorted(clean_reason(str(m.id)) for m in self._client.models.list())
        except self._openai.NotFoundError as e:
            raise self._fail(
                f"the endpoint at {url} does not list its models; set RAG_LLM_MODEL"
            ) from e
        except self._openai.OpenAIError as e:
            raise self._error(e, model=None) from e
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise self._fail(f"the endpoint at {url} lists no models; set RAG_LLM_MODEL")
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        raise self._fail(
            f"the endpoint at {url} serves several models; choose one with RAG_LLM_MODEL: {shown}"
        )

    def _fail(self, message: str) -> GenerationError:
        """A ``GenerationError`` whose message holds none of the URL's secrets, even where a
        driver's text quoted the URL whole."""
        message = message.replace(self.base_url, self.endpoint)
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return GenerationError(message)

    def _error(self, e: Exception, *, model: str | None = "") -> GenerationError:
        openai = self._openai
        url = self.endpoint
        if model == "":
            model = self.requested_model
        if isinstance(e, openai.APITimeoutError):
            return self._fail(
                f"the OpenAI-compatible endpoint at {url} did not answer within {self.timeout:g} s"
            )
        if isinstance(e, openai.APIConnectionError):
            reason = clean_reason(str(e.__cause__ or e))
            return self._fail(f"could not reach the OpenAI-compatible endpoint at {url}: {reason}")
        if isinstance(e, openai.AuthenticationError):
            return self._fail(f"the endpoint rejected the API key (OPENAI_API_KEY) at {url}")
        reason = _reason(e)
        said = f": {reason}" if reason else ""
        if isinstance(e, openai.NotFoundError):
            if model and "model" in reason.lower():
                return self._fail(f"model {model} not found at {url}")
            if model:
                return self._fail(
                    f"model {model} not found at {url}, or no chat API there "
                    f"(OPENAI_BASE_URL usually ends in /v1){said}"
                )
            return self._fail(f"not found at {url}{said}")
        if isinstance(e, openai.PermissionDeniedError):
            return self._fail(f"the endpoint at {url} refused access{said}")
        if isinstance(e, openai.RateLimitError):
            return self._fail(f"the endpoint at {url} is limiting requests (429){said}")
        if isinstance(e, openai.APIStatusError):
            return self._fail(f"the endpoint at {url} answered {e.status_code}{said}")
        return self._fail(f"the OpenAI-compatible endpoint at {url} failed: {clean_reason(str(e))}")


def _reason(e: Any) -> str:
    """The reason an endpoint's error response states, cleaned and short; empty when its
    body is not an OpenAI-style error (an HTML page, another API's JSON): an endpoint's
    body is never repeated as it came."""
    body = getattr(e, "body", None)
    if not isinstance(body, dict):
        return ""
    inner = body.get("error", body)
    if isinstance(inner, dict):
        inner = inner.get("message")
    if not isinstance(inner, str):
        inner = body.get("message") or body.get("detail")
    return clean_reason(inner) if isinstance(inner, str) else ""


def create(ctx: GeneratorContext) -> OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint (OPENAI_BASE_URL, OPENAI_API_KEY).

    The ``openai`` generator plugin: the endpoint from ``OPENAI_BASE_URL`` (or
    ``ctx.base_url``), the key from ``OPENAI_API_KEY``, sent only to the endpoint the
    environment configures."""
    s = ctx.settings
    unused(ctx, "openai", local_model="--local-model / RAG_LOCAL_MODEL")
    env_url, api_key = openai_endpoint()
    if not (ctx.base_url or env_url or api_key):
        raise ConfigError(
            "the openai generator has no endpoint: set OPENAI_BASE_URL to an "
            "OpenAI-compatible server (a local one works offline), or OPENAI_API_KEY for "
            "OpenAI's own API"
        )
    return OpenAIGenerator(
        s.llm_model,
        base_url=ctx.base_url or env_url,
        api_key=api_key if sends_key(ctx.base_url) else None,
        max_tokens=s.max_tokens or 512,
        temperature=s.temperature,
    )


def sends_key(base_url: str | None) -> bool:
    """Whether ``OPENAI_API_KEY`` goes to ``base_url`` (``None``: the environment's
    endpoint): only to the endpoint the environment configures, ``OPENAI_BASE_URL`` or else
    OpenAI's API, never to another URL."""
    env_url, api_key = openai_endpoint()
    if not api_key:
        return False
    return not base_url or base_url.rstrip("/") == (env_url or OPENAI_URL).rstrip("/")
