"""The sidebar: which collection and store, how to retrieve, who answers, and a new chat."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from apps.ui import state
from apps.ui.state import md_text
from rag import list_collections, plugins
from rag.config import RETRIEVAL_MODES, Settings
from rag.errors import ConfigError, RagError
from rag.generation import resolve_generator_name
from rag.routing import find_routes

NEW = "+ New collection…"
#: How ragkit's own generators are shown; a plugin's generator shows its name.
GENERATOR_LABELS = {
    "local": "local model (in process)",
    "openai": "OpenAI-compatible endpoint",
    "extractive": "extractive (no LLM)",
}
MODE_HELP = "dense: embeddings · bm25: keywords · hybrid: both, fused"


def _label(plugin: plugins.Plugin | None, text: str) -> str:
    return text if plugin is None or plugin.installed else f"{text} (not installed)"


def new_chat() -> None:
    st.session_state["messages"] = []


def _routes_file(base: Settings) -> Path | None:
    """The routes file that chooses generators (``--routes`` or ``<data dir>/routes.toml``);
    a broken setting is shown by the chat page when it answers."""
    try:
        return find_routes(base)
    except ConfigError:
        return None


def endpoint_picker(sb: Any) -> str | None:
    """The endpoint for the openai generator: one the operator configured (a picker when
    there are several), or any URL typed in when ``RAG_UI_ALLOW_ANY_ENDPOINT=1``. ``None``
    is the server's own. URLs are shown without their credentials."""
    if state.allow_any_endpoint():
        return (
            sb.text_input(
                "Endpoint base URL",
                placeholder=state.endpoint_label(None),
                key="base_url",
                help="Empty: the server's endpoint. Any URL is allowed on this server "
                "(RAG_UI_ALLOW_ANY_ENDPOINT).",
            ).strip()
            or None
        )
    options = state.endpoints()
    if len(options) == 1:
        sb.caption(f"Endpoint: {state.md_text(state.endpoint_label(None))} (the server's)")
        return None
    return sb.selectbox(
        "Endpoint",
        options,
        format_func=lambda u: state.endpoint_label(u) + (" (the server's)" if u is None else ""),
        key="endpoint",
        help="The endpoints this server's operator allows (OPENAI_BASE_URL, RAG_UI_ENDPOINTS).",
    )


def render() -> state.Choice:
    """Draw the sidebar; returns the choice (also kept in ``st.session_state["choice"]``)."""
    base = state.base_settings()
    ss = st.session_state
    sb = st.sidebar
    sb.title("ragkit")
    sb.caption(f"Data directory: `{base.data_dir.resolve()}`")

    # Store: every registered backend; one that is not installed can be picked, and says how
    # to install it, rather than being hidden.
    store_plugins = plugins.registry().plugins("stores")
    stores = list(store_plugins)
    if base.store not in stores:
        stores.insert(0, base.store)
    ss.setdefault("store", base.store)
    store = sb.selectbox(
        "Vector store",
        stores,
        format_func=lambda s: _label(store_plugins.get(s), s),
        key="store",
    )
    store_plugin = store_plugins.get(store)
    store_ok = store_plugin is None or store_plugin.installed
    if store_plugin is not None and not store_ok:
        sb.warning(f"The {store} store is not installed: `{store_plugin.install_hint}`")

    # Collection: those in this store, the default one, or a new name.
    try:
        names = sorted(
            {c.name for c in list_collections(base) if c.store == store} | {base.collection}
        )
    except RagError as e:
        sb.error(state.md_text(str(e)))
        names = [base.collection]
    pending = ss.pop("select_collection", None)
    if pending in names:
        ss["collection_pick"] = pending
        ss.pop("new_collection", None)
    options = [*names, NEW]
    if ss.get("collection_pick") not in options:
        ss["collection_pick"] = base.collection
    pick = sb.selectbox("Collection", options, key="collection_pick")
    name = pick
    if pick == NEW:
        name = (
            sb.text_input(
                "New collection name",
                key="new_collection",
                placeholder="letters, digits, _ and -",
                help="Created by its first ingest (Ingest page).",
            ).strip()
            or base.collection
        )

    sb.divider()
    sb.subheader("Retrieval")
    ss.setdefault("mode", base.mode)
    mode = sb.radio("Mode", RETRIEVAL_MODES, horizontal=True, key="mode", help=MODE_HELP)
    ss.setdefault("k", min(max(base.k, 1), 20))
    k = sb.slider("Passages (k)", 1, 20, key="k")
    mmr = sb.checkbox(
        "Diversify (MMR)", key="mmr", help="Re-rank the passages so that they say different things."
    )

    sb.divider()
    sb.subheader("Answers")
    routes = _routes_file(base)
    llm_model = base_url = None
    gen = base.generator
    if routes is not None:
        sb.caption(
            f":material/alt_route: Each question's generator is chosen by the routes in "
            f"{md_text(str(routes))}; each answer says which route it took and why."
        )
    else:
        gen_plugins = plugins.registry().plugins("generators")
        kinds = ["auto", *gen_plugins]
        auto_is = resolve_generator_name(base.with_(generator="auto"))
        ss.setdefault("generator", base.generator if base.generator in kinds else "auto")
        gen = sb.selectbox(
            "Generator",
            kinds,
            format_func=lambda g: (
                f"auto ({auto_is})"
                if g == "auto"
                else _label(gen_plugins.get(g), GENERATOR_LABELS.get(g, g))
            ),
            key="generator",
        )
        resolved = auto_is if gen == "auto" else gen
        gen_plugin = gen_plugins.get(resolved)
        if gen_plugin is not None and not gen_plugin.installed:
            sb.warning(f"The {resolved} generator is not installed: `{gen_plugin.install_hint}`")
        if resolved == "openai":
            ss.setdefault("llm_model", base.llm_model or "")
            base_url = endpoint_picker(sb)
            llm_model = (
                sb.text_input(
                    "Model",
                    placeholder="the endpoint's only model",
                    key="llm_model",
                ).strip()
                or None
            )
            if state.key_goes_to(base_url):
                sb.caption("API key: `OPENAI_API_KEY` from the server's environment.")
            elif os.environ.get("OPENAI_API_KEY"):
                sb.caption(
                    "API key: none sent — `OPENAI_API_KEY` goes only to the endpoint configured "
                    "in the server's environment (`OPENAI_BASE_URL`)."
                )
            else:
                sb.caption(
                    "API key: none (`OPENAI_API_KEY` is not set in the server's environment; "
                    "keys are never typed into this page)."
                )

    sb.divider()
    sb.button("New chat", on_click=new_chat, icon=":material/add_comment:", width="stretch")

    choice = state.Choice(
        collection=name,
        store=store,
        mode=mode,
        k=int(k),
        mmr=bool(mmr),
        generator=gen,
        llm_model=llm_model,
        base_url=base_url,
    )
    ss["choice"] = choice
    ss["store_installed"] = store_ok
    return choice
