"""The chat UI: a Streamlit app (``rag ui``) over ragkit's public API; see docs/ui.md."""
