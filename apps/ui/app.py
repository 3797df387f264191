"""ragkit's chat UI (Streamlit). Start it with ``rag ui``; see docs/ui.md.

This entry script sets up the page, draws the sidebar shared by every page, and runs the
page chosen in the navigation: Chat (``chat.py``), Ingest (``ingest.py``) and Insight
(``insight.py``). It calls only ragkit's public API.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run apps/ui/app.py` puts apps/ui/ on sys.path, not the repository: make `apps`
# and `rag` importable when ragkit is not installed.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from apps.ui import sidebar, state  # noqa: E402

st.set_page_config(page_title="ragkit", page_icon=":material/menu_book:", layout="centered")
st.markdown(
    """<style>
    .rk-text { white-space: pre-wrap; overflow-wrap: anywhere; margin-bottom: 0.5rem; }
    .rk-passage { font-size: 0.92rem; line-height: 1.45; padding: 0.25rem 0 0.25rem 0.75rem;
                  border-left: 3px solid rgba(128, 128, 128, 0.35); }
    </style>""",
    unsafe_allow_html=True,
)

page = st.navigation(
    [
        st.Page("chat.py", title="Chat", icon=":material/chat:", default=True),
        st.Page("ingest.py", title="Ingest", icon=":material/upload_file:"),
        st.Page("insight.py", title="Insight", icon=":material/insights:"),
    ],
    position="top",
)
try:
    sidebar.render()
except Exception as e:  # a bad RAG_* variable, an unreadable data directory...
    state.show_error(e, "reading the settings")
    st.stop()
page.run()
