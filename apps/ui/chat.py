"""The chat page: a conversation with a collection, answers streamed, every citation a link
to the passage behind it.

Passages and answers (which quote documents, and may repeat what a prompt-injected model
was told) are shown as plain text, never as Markdown or HTML: the only markup on the page is
the app's own, so a document cannot make a viewer's browser load an image (the beacon of an
exfiltration), form a link or restyle the page. The citation links are built by the app.

Run as a page by ``apps/ui/app.py`` (``st.navigation``); the helpers are importable.
"""

from __future__ import annotations

import html
import os
import re
import time
import uuid
from pathlib import PurePath
from typing import Any

import streamlit as st

from apps.ui import state
from apps.ui.state import md_text
from rag.generation import resolve_generator_name
from rag.generation.grounding import describe
from rag.generation.prompt import citation_spans
from rag.routing import router_for

#: Seconds between two repaints of a streaming answer.
_REPAINT = 0.05


# --- turning an Answer into what the page shows -------------------------------------------------


def answer_record(answer: Any, choice: state.Choice, *, searched_for: str | None = None) -> dict:
    """A plain, session-safe record of an answer (what the history keeps)."""
    return {
        "id": uuid.uuid4().hex[:10],
        "text": answer.text,
        "sources": [h.to_json() for h in answer.sources],
        "citations": list(answer.citations),
        "attributed": bool(answer.attributed),
        "left_out": int(getattr(answer, "left_out", 0)),
        "grounding": getattr(answer, "grounding", ""),
        "removed": int(getattr(answer, "removed", 0)),
        "route": getattr(answer, "route", ""),
        "route_reason": getattr(answer, "route_reason", ""),
        "generator": answer.generator,
        "model": answer.model,
        "timings": dict(answer.timings),
        "searched_for": searched_for,
        "settings": {
            "collection": choice.collection,
            "store": choice.store,
            "mode": choice.mode,
            "k": choice.k,
            "mmr": choice.mmr,
            # As shown: without credentials.
            "endpoint": state.endpoint_label(choice.base_url),
        },
    }


def anchor(answer_id: str, n: int) -> str:
    return f"cite-{answer_id}-{n}"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _html_text(text: str) -> str:
    """``text`` HTML-escaped, its line breaks as character references: the block stays on
    one source line, since a blank line would end the raw HTML block and let Markdown read
    what follows."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return html.escape(text).replace("\n", "&#10;")


def text_html(text: str) -> str:
    """``text`` as it is, in a block that keeps its line breaks (for ``st.markdown`` with
    ``unsafe_allow_html``: everything in it is escaped)."""
    return f'<div class="rk-text">{_html_text(text)}</div>'


def answer_html(text: str, n_sources: int, answer_id: str) -> str:
    """The answer as plain text, each citation ``[n]`` a link to passage ``n``'s anchor."""
    out, last = [], 0
    for start, end, numbers in citation_spans(text, n_sources):
        out.append(_html_text(text[last:start]))
        out.append("".join(f'<a href="#{anchor(answer_id, n)}">[{n}]</a>' for n in numbers))
        last = end
    out.append(_html_text(text[last:]))
    return f'<div class="rk-text">{"".join(out)}</div>'


def passage_html(text: str, anchor_id: str) -> str:
    """A passage as plain text, in a box that citation links open (``anchor_id``)."""
    return f'<div id="{anchor_id}" class="rk-text rk-passage">{_html_text(text.strip())}</div>'


def where(meta: dict[str, Any]) -> str:
    """Page and heading of a passage, as far as its metadata says."""
    parts = []
    if meta.get("page") not in (None, ""):
        parts.append(f"page {meta['page']}")
    section = meta.get("heading") or meta.get("title")
    if section:
        parts.append(str(section))
    return " · ".join(parts)


def display_path(source: str) -> str:
    try:
        rel = os.path.relpath(source)
    except ValueError:
        return source
    return source if rel.startswith("..") else rel


def generator_line(rec: dict[str, Any]) -> str:
    gen, model = rec["generator"], md_text(rec["model"])
    if gen == "local":
        return f"Answered by the local model **{model}**"
    if gen == "openai":
        url = rec["settings"].get("endpoint") or state.endpoint_label(None)
        return f"Answered by **{model}** at an OpenAI-compatible endpoint ({md_text(url)})"
    if gen == "extractive":
        return "Extractive answer: sentences quoted from the passages, **no language model**"
    return f"Answered by {md_text(gen)}: **{model}**"


#: The icon before each grounding note.
_GROUNDING_ICONS = {
    "grounded": ":material/verified:",
    "fell back": ":material/warning:",
    "abstained": ":material/block:",
}


def grounding_note(rec: dict[str, Any]) -> str:
    """What ragkit's grounding check did to the answer (empty when it did not run)."""
    grounding = rec.get("grounding") or ""
    text = describe(grounding, int(rec.get("removed") or 0))
    return f"{_GROUNDING_ICONS[grounding]} {md_text(text)}" if text else ""


def latency_line(rec: dict[str, Any]) -> str:
    t = rec["timings"]
    s = rec["settings"]
    parts = [f"retrieval {t.get('retrieve', 0):.2f} s"]
    if t.get("rewrite", 0) >= 0.005:
        parts.append(f"question rewrite {t['rewrite']:.2f} s")
    if rec["generator"] != "extractive":
        parts.append(f"first token {t.get('first_token', 0):.2f} s")
    parts.append(f"generation {t.get('generate', 0):.2f} s")
    how = f"{s['mode']}, k={s['k']}" + (", MMR" if s.get("mmr") else "")
    return " · ".join(parts) + f" · {how} · {md_text(s['store'] + '/' + s['collection'])}"


# --- drawing ---------------------------------------------------------------------------------


def render_answer(rec: dict[str, Any]) -> None:
    """The answer with linked citations, its passages as expanders, who answered and how fast."""
    sources = rec["sources"]
    text = rec["text"] or "(no answer)"
    st.markdown(answer_html(text, len(sources), rec["id"]), unsafe_allow_html=True)
    if rec.get("searched_for"):
        st.caption(f"Searched for: “{md_text(rec['searched_for'])}”")
    note = grounding_note(rec)
    if note:
        st.caption(note)
    if rec.get("route"):
        st.caption(
            f":material/alt_route: Route **{md_text(rec['route'])}**: "
            f"{md_text(rec.get('route_reason') or '')}"
        )
    cited = set(rec["citations"])
    if rec["attributed"]:
        st.caption(
            ":material/info: The model cited no passage; **citations matched by ragkit** (each sentence "
            "compared with the passages)."
        )
    elif sources and not cited:
        st.caption(":material/info: No passage was cited for this answer.")
    if sources:
        st.markdown("**Sources**" + (f" — {len(cited)} cited" if cited else ""))
    if rec.get("left_out"):
        more = f"{rec['left_out']} more passage" + (" was" if rec["left_out"] == 1 else "s were")
        st.caption(
            f":material/info: {more} retrieved but left out: beyond the model's context, so "
            "the model did not see them."
        )
    for n, hit in enumerate(sources, start=1):
        meta = hit.get("metadata") or {}
        name = md_text(PurePath(hit["source"]).name or hit["source"] or hit["id"])
        loc = md_text(where(meta))
        mark = "cited" if n in cited else "not cited"
        label = f"**[{n}]** {name}" + (f" — {loc}" if loc else "") + f" · score {hit['score']:.3f}"
        with st.expander(
            label + f" · {mark}",
            icon=":material/bookmark:" if n in cited else ":material/description:",
            key=f"src-{rec['id']}-{n}",
        ):
            st.caption(
                md_text(display_path(hit["source"]))
                + (f" · {loc}" if loc else "")
                + f" · score {hit['score']:.4f} · {'cited' if n in cited else 'retrieved, not cited'}"
            )
            st.markdown(passage_html(hit["text"], anchor(rec["id"], n)), unsafe_allow_html=True)
    st.caption(generator_line(rec) + "  \n" + latency_line(rec))


def _history_pairs(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    pairs, question = [], None
    for m in messages:
        if m["role"] == "user":
            question = m["content"]
        elif m["role"] == "assistant" and question is not None and "answer" in m:
            pairs.append((question, m["answer"]["text"]))
            question = None
    return pairs


class _Streamer:
    """Paints tokens into a placeholder as they arrive, at most every ``_REPAINT`` s."""

    def __init__(self, placeholder: Any) -> None:
        self.placeholder = placeholder
        self.text = ""
        self.painted = 0.0

    def __call__(self, token: str) -> None:
        self.text += token
        now = time.monotonic()
        if now - self.painted >= _REPAINT:
            self.placeholder.markdown(text_html(self.text + " ▌"), unsafe_allow_html=True)
            self.painted = now


def ask(question: str, choice: state.Choice) -> dict[str, Any]:
    """Answer ``question`` in the current chat, streaming into the page."""
    settings = state.settings_for(choice)
    col = state.collection(settings)
    kind = resolve_generator_name(settings)
    history = _history_pairs(st.session_state.get("messages", []))
    status = st.empty()
    status.caption("Searching and thinking…" if kind != "extractive" else "Searching…")
    placeholder = st.empty()
    try:
        # With a routes file (rag.routing) each question's generator is the router's choice.
        gen = None if router_for(col) else state.generator(settings, col, choice.base_url)
        answer = col.ask(
            question,
            k=choice.k,
            mode=choice.mode,
            mmr=choice.mmr,
            history=history,
            generator=gen,
            on_token=_Streamer(placeholder),
        )
    finally:
        status.empty()
        placeholder.empty()
    return answer_record(answer, choice, searched_for=answer.query or question)


def render() -> None:
    choice = state.current_choice()
    st.session_state.setdefault("messages", [])
    messages: list[dict[str, Any]] = st.session_state["messages"]

    st.title("Chat")
    st.caption(
        f"Ask about the documents in **{choice.collection}** ({choice.store}). Every claim "
        "links to the passage behind it: click a number to open it."
    )
    ready = False
    with state.errors_shown("opening the collection"):
        if st.session_state.get("store_installed", True):
            col = state.collection(state.settings_for(choice))
            ready = not state.is_empty(col)
            if not ready:
                st.info(
                    f"The collection **{choice.collection}** has no documents yet: add some on "
                    "the Ingest page.",
                    icon=":material/upload_file:",
                )
                st.page_link("ingest.py", label="Go to Ingest", icon=":material/upload_file:")

    for m in messages:
        with st.chat_message(m["role"]):
            if m["role"] == "user":
                st.markdown(text_html(m["content"]), unsafe_allow_html=True)
            elif "answer" in m:
                render_answer(m["answer"])
            else:
                st.error(md_text(m.get("error", "no answer")), icon=":material/error:")

    question = st.chat_input("Ask a question about your documents", disabled=not ready)
    if not question or not question.strip():
        return
    question = question.strip()
    messages.append({"role": "user", "content": question})
    with st.chat_message("user"):
        st.markdown(text_html(question), unsafe_allow_html=True)
    with st.chat_message("assistant"):
        try:
            rec = ask(question, choice)
        except Exception as e:  # shown as a message; kept in the chat, not in the history
            state.show_error(e, "answering")
            messages.append({"role": "assistant", "error": state.error_text(e, "answering")})
            return
        render_answer(rec)
    messages.append({"role": "assistant", "answer": rec})


if __name__ == "__main__":
    render()
