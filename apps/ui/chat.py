"""The chat page: a conversation with a collection, answers streamed, every citation a link
to the passage behind it.

Run as a page by ``apps/ui/app.py`` (``st.navigation``); the helpers are importable.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import PurePath
from typing import Any

import streamlit as st

from apps.ui import state
from rag.generation import resolve_generator_name
from rag.generation.prompt import citation_spans

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
            "base_url": choice.base_url,
        },
    }


def anchor(answer_id: str, n: int) -> str:
    return f"cite-{answer_id}-{n}"


def _escape_md(text: str) -> str:
    # Answers are shown as Markdown; "$" would start LaTeX and "<" raw HTML.
    return text.replace("\\", "\\\\").replace("$", "\\$").replace("<", "&lt;")


def linked_text(text: str, n_sources: int, answer_id: str) -> str:
    """``text`` as Markdown, each citation ``[n]`` a link to passage ``n``'s anchor."""

    out, last = [], 0
    for start, end, numbers in citation_spans(text, n_sources):
        out.append(_escape_md(text[last:start]))
        out.append("".join(f"[\\[{n}\\]](#{anchor(answer_id, n)})" for n in numbers))
        last = end
    out.append(_escape_md(text[last:]))
    return "".join(out)


_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def passage_markdown(text: str) -> str:
    """A passage as Markdown that cannot break out of its box: headings become bold lines,
    raw HTML and LaTeX are escaped."""
    text = text.replace("$", "\\$").replace("<", "&lt;")
    return _HEADING.sub(lambda m: f"**{m.group(1)}**  ", text)


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
    gen, model = rec["generator"], rec["model"]
    if gen == "local":
        return f"Answered by the local model **{model}**"
    if gen == "openai":
        url = rec["settings"].get("base_url") or os.environ.get("OPENAI_BASE_URL") or "OpenAI"
        return f"Answered by **{model}** at an OpenAI-compatible endpoint ({url})"
    if gen == "extractive":
        return "Extractive answer: sentences quoted from the passages, **no language model**"
    return f"Answered by {gen}: **{model}**"


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
    return " · ".join(parts) + f" · {how} · {s['store']}/{s['collection']}"


# --- drawing ---------------------------------------------------------------------------------


def render_answer(rec: dict[str, Any]) -> None:
    """The answer with linked citations, its passages as expanders, who answered and how fast."""
    sources = rec["sources"]
    text = rec["text"] or "_(no answer)_"
    st.markdown(linked_text(text, len(sources), rec["id"]))
    if rec.get("searched_for"):
        st.caption(f"Searched for: “{rec['searched_for']}”")
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
    for n, hit in enumerate(sources, start=1):
        meta = hit.get("metadata") or {}
        name = PurePath(hit["source"]).name or hit["source"] or hit["id"]
        loc = where(meta)
        mark = "cited" if n in cited else "not cited"
        label = f"**[{n}]** {name}" + (f" — {loc}" if loc else "") + f" · score {hit['score']:.3f}"
        with st.expander(
            label + f" · {mark}",
            icon=":material/bookmark:" if n in cited else ":material/description:",
            key=f"src-{rec['id']}-{n}",
        ):
            st.caption(
                f"`{display_path(hit['source'])}`"
                + (f" · {loc}" if loc else "")
                + f" · score {hit['score']:.4f} · {'cited' if n in cited else 'retrieved, not cited'}"
            )
            st.markdown(
                f'<div id="{anchor(rec["id"], n)}" class="rk-passage">\n\n'
                f"{passage_markdown(hit['text'])}\n\n</div>",
                unsafe_allow_html=True,
            )
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
            self.placeholder.markdown(_escape_md(self.text) + " ▌")
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
        gen = state.generator(settings, col, choice.base_url)
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
    searched = answer.query if answer.query and answer.query != question else None
    return answer_record(answer, choice, searched_for=searched)


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
                st.markdown(_escape_md(m["content"]))
            elif "answer" in m:
                render_answer(m["answer"])
            else:
                st.error(m.get("error", "no answer"), icon=":material/error:")

    question = st.chat_input("Ask a question about your documents", disabled=not ready)
    if not question or not question.strip():
        return
    question = question.strip()
    messages.append({"role": "user", "content": question})
    with st.chat_message("user"):
        st.markdown(_escape_md(question))
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
