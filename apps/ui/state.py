"""What every page shares: the launch options, the sidebar's choices as ragkit ``Settings``,
the heavy objects cached once per server process, and error display.

Heavy objects (a collection with its embedder and store, a generator with its model) live
in ``st.cache_resource``, keyed by the settings that decide them, so that reruns and other
browser sessions reuse them. Generators are built by :func:`rag.generation.load_generator`
like everywhere else in ragkit; the sidebar only adds the endpoint picked in it, one of
those the server's operator configured (:func:`endpoints`).

Text that the app does not write itself (passages, answers, file names, headings, error
messages, an endpoint's model name) is shown through :func:`md_text`, so that no Markdown
in it can load an image or form a link.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from rag import Settings, open_collection
from rag.collection import Collection, collection_dir
from rag.config import openai_endpoint
from rag.errors import ConfigError, RagError
from rag.generation import Generator, load_generator, resolve_generator_name
from rag.generation.openai_compat import OPENAI_URL, redact_url, sends_key

logger = logging.getLogger("rag.ui")

#: Where the app's own files sit.
APP_DIR = Path(__file__).resolve().parent
#: The repository the app runs from (``apps/ui/`` is two levels below it).
REPO_DIR = APP_DIR.parents[1]
DEFAULT_MAX_UPLOAD_MB = 50.0


# --- launch options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchOptions:
    """What ``rag ui`` passed after ``--`` (each falls back to ragkit's RAG_* variables)."""

    data_dir: str | None = None
    collection: str | None = None
    store: str | None = None
    store_url: str | None = None
    store_options: tuple[tuple[str, str], ...] = ()
    max_upload_mb: float | None = None


def parse_launch_args(argv: list[str]) -> LaunchOptions:
    """Parse the script arguments; unknown ones are ignored (so that a test runner's
    own ``sys.argv`` does no harm)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data-dir")
    p.add_argument("--collection")
    p.add_argument("--store")
    p.add_argument("--store-url")
    p.add_argument("--store-opt", action="append", default=[])
    p.add_argument("--max-upload-mb", type=float)
    try:
        ns, _ = p.parse_known_args(argv)
    except SystemExit:  # a malformed value: fall back to the environment
        return LaunchOptions()
    opts = []
    for item in ns.store_opt:
        key, sep, value = item.partition("=")
        if sep and key.strip():
            opts.append((key.strip(), value.strip()))
    return LaunchOptions(
        ns.data_dir, ns.collection, ns.store, ns.store_url, tuple(opts), ns.max_upload_mb
    )


@functools.cache
def launch() -> LaunchOptions:
    return parse_launch_args(sys.argv[1:])


def base_settings() -> Settings:
    """The server's defaults: launch options over RAG_* variables over ragkit's defaults."""
    opts = launch()
    return Settings.from_env(
        data_dir=opts.data_dir,
        collection=opts.collection,
        store=opts.store,
        store_url=opts.store_url,
        store_options=dict(opts.store_options) or None,
    )


def max_upload_bytes() -> int:
    """The per-file upload limit: ``--max-upload-mb``, else ``RAG_UI_MAX_UPLOAD_MB``, else
    Streamlit's ``server.maxUploadSize``."""
    mb = launch().max_upload_mb
    if mb is None and os.environ.get("RAG_UI_MAX_UPLOAD_MB"):
        try:
            mb = float(os.environ["RAG_UI_MAX_UPLOAD_MB"])
        except ValueError:
            mb = None
    if mb is None:
        try:
            mb = float(st.get_option("server.maxUploadSize"))
        except Exception:
            mb = DEFAULT_MAX_UPLOAD_MB
    return max(1, int(mb * 1024 * 1024))


# --- the sidebar's choices -------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What the sidebar chose for this session."""

    collection: str
    store: str
    mode: str = "dense"
    k: int = 5
    mmr: bool = False
    generator: str = "auto"
    llm_model: str | None = None
    base_url: str | None = None


def settings_for(choice: Choice) -> Settings:
    """ragkit ``Settings`` for the sidebar's choice (raises ``ConfigError``)."""
    base = base_settings()
    same_store = choice.store == base.store
    return Settings.from_env(
        data_dir=base.data_dir,
        collection=choice.collection,
        store=choice.store,
        # A server given for the launch store does not apply to another backend.
        store_url=base.store_url if same_store else None,
        store_options=dict(base.store_options) if same_store and base.store_options else None,
        k=choice.k,
        mode=choice.mode,
        generator=choice.generator,
        llm_model=choice.llm_model or None,
    )


def current_choice() -> Choice:
    """The choice the sidebar stored in session state this run."""
    choice = st.session_state.get("choice")
    if choice is None:
        base = base_settings()
        choice = Choice(base.collection, base.store, base.mode, base.k, False, base.generator)
    return choice


# --- cached heavy objects --------------------------------------------------------------------


def _collection_key(s: Settings) -> tuple[Any, ...]:
    exists = (collection_dir(s) / "manifest.json").exists()
    return (
        str(s.data_dir.resolve()),
        s.collection,
        s.store,
        s.store_url,
        tuple(sorted((k, str(v)) for k, v in s.store_options.items())),
        s.embed_model,
        s.embed_backend,
        s.chunk_size,
        s.chunk_overlap,
        s.max_file_mb,
        exists,  # a collection created elsewhere since is opened afresh
    )


@st.cache_resource(show_spinner="Opening the collection…", max_entries=16)
def _open(key: tuple[Any, ...], _settings: Settings) -> Collection:
    col = open_collection(_settings, create=True)
    if col.exists:
        # Load the embedding model now, so that the first answer's retrieval time is the
        # search's, not the model's loading.
        col.embedder  # noqa: B018
    return col


def collection(settings: Settings) -> Collection:
    """The collection named by ``settings``, shared by every session of this server.
    (A collection that does not exist yet opens empty; the first ingest creates it.)"""
    return _open(_collection_key(settings), settings)


def is_empty(col: Collection) -> bool:
    return not col.exists or (col.manifest.last_ingest or {}).get("total_chunks", 1) == 0


#: The settings a generator is built from. Changing another one (k, the mode, the collection)
#: reuses the generator already loaded.
GENERATION_FIELDS = (
    "generator",
    "llm_model",
    "local_model",
    "llm_threads",
    "max_tokens",
    "temperature",
)


@st.cache_resource(show_spinner="Loading the generator…", max_entries=8)
def _generator(
    key: tuple[Any, ...],
    _settings: Settings,
    _embed: Callable[[Sequence[str]], Any],
    base_url: str | None,
) -> Generator:
    return load_generator(_settings, embed=_embed, base_url=base_url)


def generator(settings: Settings, col: Collection, base_url: str | None) -> Generator:
    """The generator ``settings.generator`` names ("auto" resolved), built by
    :func:`rag.generation.load_generator` with ``col``'s embedder and the endpoint picked in
    the sidebar (``base_url``, checked by :func:`check_endpoint`; the API key from the
    environment goes only to the endpoint the environment configures). Shared by every
    session of this server."""
    settings = settings.with_(generator=resolve_generator_name(settings))
    base_url = base_url or None
    check_endpoint(base_url)
    key = (
        tuple(getattr(settings, f) for f in GENERATION_FIELDS),
        base_url,
        openai_endpoint()[0],
        key_goes_to(base_url),
        # The embedder passed to the generator (the extractive one matches sentences with it).
        col.embed_model,
        col.embed_backend,
    )
    return _generator(key, settings, col.embedder.embed, base_url)


def key_goes_to(base_url: str | None) -> bool:
    """Whether OPENAI_API_KEY is sent to ``base_url`` (``None``: the environment's endpoint):
    only to the endpoint the environment configures, ``OPENAI_BASE_URL`` or else OpenAI's
    API, as :func:`rag.generation.openai_compat.create` decides."""
    return sends_key(base_url)


# --- endpoints: the server's to choose ---------------------------------------------------------


def allow_any_endpoint() -> bool:
    """Whether the operator lets visitors type any endpoint URL
    (``RAG_UI_ALLOW_ANY_ENDPOINT=1``): the server then requests whatever URL a visitor
    names."""
    return os.environ.get("RAG_UI_ALLOW_ANY_ENDPOINT", "").strip().lower() in ("1", "true", "yes")


def _same(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def endpoints() -> list[str | None]:
    """The endpoints the page may choose: ``None``, the server's own (``OPENAI_BASE_URL``,
    else OpenAI's API), then the comma-separated URLs of ``RAG_UI_ENDPOINTS``."""
    own = openai_endpoint()[0] or OPENAI_URL
    out: list[str | None] = [None]
    for url in os.environ.get("RAG_UI_ENDPOINTS", "").split(","):
        url = url.strip()
        if url and not _same(url, own) and not any(u and _same(u, url) for u in out):
            out.append(url)
    return out


def check_endpoint(base_url: str | None) -> None:
    """Raise ``ConfigError`` (before any request) for an endpoint the operator did not
    configure, unless free entry is on."""
    if base_url is None or allow_any_endpoint():
        return
    own = openai_endpoint()[0] or OPENAI_URL
    if not _same(base_url, own) and not any(u and _same(u, base_url) for u in endpoints()):
        raise ConfigError(
            f"the endpoint {redact_url(base_url)} is not one this server offers: the operator "
            "lists endpoints in RAG_UI_ENDPOINTS (or sets RAG_UI_ALLOW_ANY_ENDPOINT=1)"
        )


def endpoint_label(base_url: str | None) -> str:
    """An endpoint as the page shows it: its URL without credentials (``None``: the
    server's own)."""
    if base_url is None:
        return redact_url(openai_endpoint()[0] or OPENAI_URL)
    return redact_url(base_url)


# --- text from elsewhere ------------------------------------------------------------------

# Everything Markdown, GitHub's extensions or Streamlit's (":red[...]", ":material/x:", "$")
# could read as markup; "&" for entities.
_MARKUP = re.compile(r"([\\`*_{}\[\]()<>#!|~$:&])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def md_text(text: str) -> str:
    """``text`` as Markdown that shows it as it is, on one line: every markup character
    escaped, control characters dropped, line breaks made spaces. For labels, captions
    and messages holding text the app did not write."""
    text = _CONTROL.sub("", text.replace("\r", " ").replace("\n", " "))
    return _MARKUP.sub(r"\\\1", text)


# --- errors -------------------------------------------------------------------------------


def error_text(e: BaseException, doing: str = "") -> str:
    """The message shown for ``e``: ragkit's errors as they are; others by type and text."""
    if isinstance(e, RagError):
        return str(e)
    what = f" while {doing}" if doing else ""
    return f"Unexpected error{what}: {type(e).__name__}: {e}. The details are in the server's log."


def show_error(e: BaseException, doing: str = "") -> None:
    """A message, never a traceback; unexpected errors are also logged with theirs."""
    if not isinstance(e, RagError):
        logger.error("unexpected error%s", f" while {doing}" if doing else "", exc_info=e)
    st.error(md_text(error_text(e, doing)), icon=":material/error:")


@contextmanager
def errors_shown(doing: str = "", on_error: Callable[[], None] | None = None) -> Iterator[None]:
    """Show any exception from the block as a message. Streamlit's own control flow (rerun,
    stop) derives from BaseException and passes through."""
    try:
        yield
    except Exception as e:
        show_error(e, doing)
        if on_error is not None:
            on_error()


def format_mb(n: int) -> str:
    """A byte count for people: "50 MB", "1.5 MB", "200 KB"."""
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    mb = n / (1024 * 1024)
    return f"{mb:.0f} MB" if math.isclose(mb, round(mb)) else f"{mb:.1f} MB"
