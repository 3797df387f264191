"""The ingest page: upload files, name a folder on the server, a web address or a git
repository; watch the progress, see what failed and why, and the collection's numbers.

Run as a page by ``apps/ui/app.py`` (``st.navigation``); the helpers are importable.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import streamlit as st

from apps.ui import state
from apps.ui.uploads import SaveResult, save_uploads, upload_dir
from rag.collection import Collection

#: Seconds between two repaints of the progress bar.
_POLL = 0.2


def supported_suffixes() -> list[str]:
    from connectors.filesystem import SUPPORTED_SUFFIXES

    return sorted(SUPPORTED_SUFFIXES)


def run_ingest(
    col: Collection,
    paths: Sequence[Path | str],
    on_progress: Callable[[Any], None] | None = None,
    *,
    source: str = "filesystem",
    params: Mapping[str, str] | None = None,
) -> Any:
    """``col.ingest(paths, source=source, params=params)`` in a worker thread, calling
    ``on_progress`` with the latest :class:`rag.indexing.Progress` from this (the script's)
    thread, where Streamlit elements may be updated; returns the
    :class:`~rag.indexing.IngestReport`."""
    latest: list[Any] = []
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["report"] = col.ingest(
                list(paths), source=source, params=dict(params or {}), progress=latest.append
            )
        except BaseException as e:  # re-raised in the script's thread
            outcome["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="ragkit-ui-ingest", daemon=True).start()
    shown = 0
    # Bounded by the ingest itself: the worker always sets `done` when it ends.
    while not done.wait(_POLL):
        if on_progress is not None and len(latest) > shown:
            shown = len(latest)
            on_progress(latest[-1])
    if "error" in outcome:
        raise outcome["error"]
    if on_progress is not None and latest:
        on_progress(latest[-1])
    return outcome["report"]


def _progress_bar() -> Callable[[Any], None]:
    bar = st.progress(0.0, text="Reading files (the first ingest also loads the embedding model)…")

    def update(p: Any) -> None:
        frac = p.files_done / p.files_total if p.files_total else 1.0
        rate = f", {p.embedded / p.embed_seconds:.0f} texts/s" if p.embed_seconds > 0 else ""
        failed = f", {p.failed} failed" if p.failed else ""
        bar.progress(
            min(1.0, frac),
            text=f"{p.files_done} of {p.files_total} files · {p.chunks} chunks{rate}{failed}",
        )

    return update


def ingest_into(
    choice: state.Choice,
    paths: Sequence[Path | str],
    label: str,
    *,
    source: str = "filesystem",
    params: Mapping[str, str] | None = None,
) -> None:
    """Ingest ``paths`` (read by the source plugin ``source`` with its ``params``) with a
    progress bar, and keep the outcome for the page to show."""
    settings = state.settings_for(choice)
    col = state.collection(settings)
    report = run_ingest(col, paths, _progress_bar(), source=source, params=params)
    outcome = report.to_json()
    outcome["label"] = label
    outcome["collection"] = choice.collection
    st.session_state["ingest_outcome"] = outcome
    # Reopen in the sidebar under its own name once it exists (a new collection).
    st.session_state["select_collection"] = choice.collection
    st.rerun()


def save_and_ingest(choice: state.Choice, files: Sequence[Any]) -> SaveResult:
    """Save uploads into ``<data dir>/uploads/<collection>/`` and ingest that folder."""
    settings = state.settings_for(choice)
    folder = upload_dir(settings.data_dir, choice.collection)
    result = save_uploads(
        files, folder, max_bytes=state.max_upload_bytes(), suffixes=supported_suffixes()
    )
    st.session_state["upload_refused"] = result.refused
    # A fresh uploader next time: the files are in the upload folder now.
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1
    if result.saved:
        ingest_into(choice, [folder], f"{len(result.saved)} uploaded file(s)")
    return result


def source_choices(name: str) -> tuple[dict[str, str] | None, str]:
    """The options the source plugin ``name`` declares (option -> help), or ``None`` and
    why it cannot be used (not installed, cannot be loaded)."""
    from rag import plugins
    from rag.source import source_options

    try:
        cls = plugins.load("sources", name)
    except Exception as e:  # a missing extra names its install command
        return None, str(e)
    return dict(source_options(cls)), ""


def web_address_problem(url: str) -> str | None:
    """Why ``url`` is not an address the web source reads, or ``None``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{url} is not a web address: write it with http:// or https://"
    return None


def git_target(repo: str, ref: str = "") -> str:
    """The git source's target for a repository (a path on the server or a clone URL) and
    a branch, tag or commit (empty: the repository's HEAD)."""
    repo, ref = repo.strip(), ref.strip()
    target = repo if repo.startswith("git+") else f"git+{repo}"
    return f"{target}@{ref}" if ref else target


def _option_label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def web_tab(choice: state.Choice) -> None:
    url = st.text_input(
        "Web address",
        key="web_url",
        placeholder="https://docs.example.com/",
        help="Pages are fetched from the server; unchanged pages cost nothing next time.",
    ).strip()
    declared, problem = source_choices("web")
    if declared is None:
        st.warning(
            f"Web pages cannot be ingested here: {state.md_text(problem)}",
            icon=":material/warning:",
        )
        return
    params: dict[str, str] = {}
    if declared:
        columns = st.columns(min(3, len(declared)))
        for i, (name, text) in enumerate(declared.items()):
            with columns[i % len(columns)]:
                value = st.text_input(
                    _option_label(name), key=f"web_opt_{name}", help=text, placeholder="default"
                ).strip()
            if value:
                params[name] = value
    if st.button("Ingest web pages", type="primary", disabled=not url, key="ingest_web"):
        bad = web_address_problem(url)
        if bad:
            st.error(state.md_text(bad), icon=":material/error:")
            return
        with state.errors_shown("ingesting the web pages"):
            ingest_into(choice, [url], state.md_text(url), source="web", params=params)


def git_tab(choice: state.Choice) -> None:
    repo = st.text_input(
        "Repository",
        key="git_repo",
        placeholder="/path/to/repo or https://host/owner/repo.git",
        help="A repository on the server, or a URL git can clone there (the clone is kept "
        "with the collection and fetched on each ingest). The files tracked at the ref are "
        "read, never the working tree.",
    ).strip()
    ref = st.text_input(
        "Branch, tag or commit", key="git_ref", placeholder="HEAD", help="Empty: HEAD"
    ).strip()
    if st.button("Ingest repository", type="primary", disabled=not repo, key="ingest_git"):
        target = git_target(repo, ref)
        with state.errors_shown("ingesting the repository"):
            ingest_into(choice, [target], state.md_text(target), source="git")


def show_stats(col: Collection) -> None:
    s = col.status()
    last = s.get("last_ingest") or {}
    emb = s.get("embedder") or {}
    c1, c2, c3 = st.columns(3)
    c1.metric("Documents", f"{s['sources']:,}")
    c2.metric("Chunks", f"{s['chunks']:,}")
    c3.metric("Last ingest", _ago(last.get("time")) if last else "never")
    if emb:
        chunker = s.get("chunker") or {}
        st.caption(
            f"Embedder `{emb['model']}` ({emb['backend']}, {emb['dim']} dimensions) · chunks of "
            f"{chunker.get('chunk_size')} tokens, {chunker.get('chunk_overlap')} overlapping · "
            f"store {s['store']}"
        )
    if last:
        st.caption(
            f"Last ingest: {last.get('files', 0)} files — {last.get('added', 0)} added, "
            f"{last.get('updated', 0)} updated, {last.get('unchanged', 0)} unchanged, "
            f"{last.get('deleted', 0)} removed, {last.get('failed', 0)} failed "
            f"({last.get('seconds', 0):.1f} s)"
        )


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    d = max(0.0, time.time() - t)
    if d < 90:
        return "just now"
    if d < 3600 * 1.5:
        return f"{d / 60:.0f} min ago"
    if d < 86400 * 1.5:
        return f"{d / 3600:.0f} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(t))


def show_outcome(data_dir: Path) -> None:
    refused = st.session_state.get("upload_refused") or []
    if refused:
        st.error(f"{len(refused)} upload(s) refused:", icon=":material/block:")
        # st.table reads Markdown in its cells: names and reasons are escaped.
        st.table(
            [
                {"file": state.md_text(name), "reason": state.md_text(reason)}
                for name, reason in refused
            ],
            hide_index=True,
            border="horizontal",
        )
    out = st.session_state.get("ingest_outcome")
    if not out:
        return
    msg = (
        f"Ingested {out['label']} into **{out['collection']}**: {out['files']} files — "
        f"{out['added']} added, {out['updated']} updated, {out['unchanged']} unchanged, "
        f"{out['deleted']} removed; {out['chunks']} chunks written "
        f"({out['embedded']} embedded, {out['cached']} from the cache) in {out['seconds']:.1f} s."
    )
    if out["failed"]:
        st.warning(msg + f" **{len(out['failed'])} file(s) failed:**", icon=":material/warning:")
        st.table(
            [
                {
                    "file": state.md_text(_display(f["path"], data_dir)),
                    "reason": state.md_text(f["reason"]),
                }
                for f in out["failed"]
            ],
            hide_index=True,
            border="horizontal",
        )
    else:
        st.success(msg, icon=":material/check_circle:")


def _display(path: str, data_dir: Path) -> str:
    """Uploads relative to the data directory, other files as the chat shows them."""
    from apps.ui.chat import display_path

    p = Path(path)
    root = data_dir.resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else display_path(path)


def render() -> None:
    choice = state.current_choice()
    st.title("Ingest")
    st.caption(
        f"Add documents to **{choice.collection}** ({choice.store}). Ingestion is incremental: "
        "unchanged files cost nothing, changed files are replaced."
    )
    if not st.session_state.get("store_installed", True):
        st.warning(f"The {choice.store} store is not installed; pick another in the sidebar.")
        return
    col = None
    with state.errors_shown("opening the collection"):
        col = state.collection(state.settings_for(choice))
        if state.is_empty(col):
            model = col.embed_model
            st.info(
                f"**{choice.collection}** is empty. Its first ingest creates it with the "
                f"embedding model `{model}`.",
                icon=":material/info:",
            )
        else:
            show_stats(col)
    if col is None:
        return

    show_outcome(state.base_settings().data_dir)
    limit = state.max_upload_bytes()
    suffixes = supported_suffixes()
    up, folder_tab, web, git = st.tabs(
        ["Upload files", "Folder on the server", "Web address", "Git repository"]
    )
    with up:
        files = st.file_uploader(
            "Files to add",
            type=[s.lstrip(".") for s in suffixes],
            accept_multiple_files=True,
            # The browser refuses larger files up front; save_uploads checks the exact limit.
            max_upload_size=max(1, math.ceil(limit / (1024 * 1024))),
            key=f"uploads-{st.session_state.get('upload_round', 0)}",
            help=f"Up to {state.format_mb(limit)} per file; kept in the data directory "
            f"under uploads/{choice.collection}/.",
        )
        if st.button("Ingest uploaded files", type="primary", disabled=not files, key="ingest_up"):
            with state.errors_shown("ingesting the uploads"):
                save_and_ingest(choice, files or [])
    with folder_tab:
        path = st.text_input(
            "Folder path on the server",
            key="folder",
            placeholder="/path/to/docs",
            help="Walked recursively; hidden folders, .git, .venv, node_modules are skipped.",
        ).strip()
        if st.button("Ingest folder", type="primary", disabled=not path, key="ingest_folder"):
            target = Path(path).expanduser()
            if not target.exists():
                st.error(
                    f"{state.md_text(str(target))} does not exist on the server.",
                    icon=":material/error:",
                )
            else:
                with state.errors_shown("ingesting the folder"):
                    ingest_into(choice, [target.resolve()], state.md_text(str(target)))
    with web:
        web_tab(choice)
    with git:
        git_tab(choice)


if __name__ == "__main__":
    render()
