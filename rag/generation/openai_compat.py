"""Any OpenAI-compatible chat endpoint: OpenAI itself, vLLM, llama.cpp's server, Ollama,
LM Studio, ... through the ``openai`` package.

The endpoint is configured by the environment only (``OPENAI_BASE_URL``,
``OPENAI_API_KEY``; see :func:`rag.config.openai_endpoint`), the model by
``RAG_LLM_MODEL`` or, when the endpoint serves exactly one, by asking it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from rag.config import openai_endpoint
from rag.errors import GenerationError
from rag.generation.context import GeneratorContext, unused
from rag.generation.prompt import Message, build_messages, clean_rewrite, rewrite_messages
from rag.types import Hit

History = Sequence[tuple[str, str]]

#: The model used on OpenAI's own API when none is named.
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
OPENAI_URL = "https://api.openai.com/v1"


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
        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout = timeout
        # One retry: enough for a dropped connection, short enough to fail fast when the
        # server is down.
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=1
        )
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
                        self.model = chunk.model
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
        try:
            ids = sorted(m.id for m in self._client.models.list())
        except self._openai.NotFoundError as e:
            raise GenerationError(
                f"the endpoint at {self.base_url} does not list its models; set RAG_LLM_MODEL"
            ) from e
        except self._openai.OpenAIError as e:
            raise self._error(e, model=None) from e
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise GenerationError(
                f"the endpoint at {self.base_url} lists no models; set RAG_LLM_MODEL"
            )
        raise GenerationError(
            f"the endpoint at {self.base_url} serves several models; choose one with "
            f"RAG_LLM_MODEL: {', '.join(ids)}"
        )

    def _error(self, e: Exception, *, model: str | None = "") -> GenerationError:
        openai = self._openai
        url = self.base_url
        if model == "":
            model = self.requested_model
        if isinstance(e, openai.APITimeoutError):
            return GenerationError(
                f"the OpenAI-compatible endpoint at {url} did not answer within {self.timeout:g} s"
            )
        if isinstance(e, openai.APIConnectionError):
            reason = _one_line(str(e.__cause__ or e))
            return GenerationError(
                f"could not reach the OpenAI-compatible endpoint at {url}: {reason}"
            )
        if isinstance(e, openai.AuthenticationError):
            return GenerationError(f"the endpoint rejected the API key (OPENAI_API_KEY) at {url}")
        if isinstance(e, openai.NotFoundError):
            if model and "model" in _message(e).lower():
                return GenerationError(f"model {model} not found at {url}")
            if model:
                return GenerationError(
                    f"model {model} not found at {url}, or no chat API there "
                    f"(OPENAI_BASE_URL usually ends in /v1): {_message(e)}"
                )
            return GenerationError(f"not found at {url}: {_message(e)}")
        if isinstance(e, openai.PermissionDeniedError):
            return GenerationError(f"the endpoint at {url} refused access: {_message(e)}")
        if isinstance(e, openai.RateLimitError):
            return GenerationError(
                f"the endpoint at {url} is limiting requests (429): {_message(e)}"
            )
        if isinstance(e, openai.APIStatusError):
            return GenerationError(f"the endpoint at {url} answered {e.status_code}: {_message(e)}")
        return GenerationError(
            f"the OpenAI-compatible endpoint at {url} failed: {_one_line(str(e))}"
        )


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return _one_line(str(inner["message"]))
        if isinstance(inner, str):
            return _one_line(inner)
    return _one_line(str(getattr(e, "message", None) or e))


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def create(ctx: GeneratorContext) -> OpenAIGenerator:
    """Any OpenAI-compatible chat endpoint (OPENAI_BASE_URL, OPENAI_API_KEY).

    The ``openai`` generator plugin: the endpoint from ``OPENAI_BASE_URL`` (or
    ``ctx.base_url``), the key from ``OPENAI_API_KEY``, sent only to the endpoint the
    environment configures."""
    s = ctx.settings
    unused(ctx, "openai", local_model="--local-model / RAG_LOCAL_MODEL")
    env_url, api_key = openai_endpoint()
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
