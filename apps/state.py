"""What every page shares: the launch options, the sidebar's choices as ragkit ``Settings``,
the heavy objects cached once per server process, and error display.

Heavy objects (a collection with its embedder and store, an LLM generator) live in
``st.cache_resource``, keyed by the settings that decide them, so that reruns and other
browser sessions reuse them; the local model is loaded once per server process.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from rag import Settings, open_collection
from rag.collection import Collection, collection_dir
from rag.errors import ConfigError, RagError

logger = logging.getLogger("rag.ui")

#: Where the app's own files sit; the repository root is its parent.
APP_DIR = Path(__file__).resolve().parent
DEFAULT_MAX_UPLOAD_MB = 50.0
#: The OpenAI API, where a key from the environment goes when no base URL is configured.
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


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


@st.cache_resource(show_spinner="Loading the language model (once per server)…", max_entries=8)
def _llm(kind: str, model: str | None, base_url: str | None, local_model: str | None,
         threads: int, max_tokens: int | None, temperature: float) -> Any:  # fmt: skip
    if kind == "local":
        from rag.generation import load_generator

        s = Settings(
            generator="local",
            local_model=local_model,
            llm_threads=threads,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        return load_generator(s)
    if kind == "openai":
        # load_generator reads the endpoint from the environment only; the sidebar may name
        # another one, so the generator is built here. The key from the environment goes
        # only to the endpoint the environment configures (never to a URL typed in a page).
        from rag.generation.openai_compat import OpenAIGenerator

        env_url = os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
        url = base_url or env_url
        key = os.environ.get("OPENAI_API_KEY") if _same_url(url, env_url) else None
        return OpenAIGenerator(
            model,
            base_url=None if url == OPENAI_DEFAULT_URL else url,
            api_key=key,
            max_tokens=max_tokens or 512,
            temperature=temperature,
        )
    raise ConfigError(f"unknown generator {kind!r}")


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def key_goes_to(base_url: str | None) -> bool:
    """Whether OPENAI_API_KEY would be sent to ``base_url`` (see :func:`_llm`)."""
    env_url = os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
    return bool(os.environ.get("OPENAI_API_KEY")) and _same_url(base_url or env_url, env_url)


def generator(settings: Settings, kind: str, col: Collection, base_url: str | None) -> Any:
    """The generator of ``kind`` (already resolved from "auto")."""
    if kind == "extractive":
        from rag.generation import load_generator

        return load_generator(settings.with_(generator="extractive"), embed=col.embedder.embed)
    return _llm(
        kind,
        settings.llm_model,
        base_url or None,
        settings.local_model,
        settings.llm_threads,
        settings.max_tokens,
        settings.temperature,
    )


def resolved_generator(settings: Settings) -> str:
    from rag.generation import resolve_generator_name

    return resolve_generator_name(settings)


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
    st.error(error_text(e, doing), icon=":material/error:")


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
