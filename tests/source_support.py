"""Helpers shared by the source and recall tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


def spy_loads(monkeypatch: pytest.MonkeyPatch, source_class: type) -> list[str]:
    """The ids ``source_class.load`` reads from now on, in order."""
    seen: list[str] = []
    original = source_class.load

    def spy(self: Any, item: Any) -> Any:
        seen.append(item.id)
        return original(self, item)

    monkeypatch.setattr(source_class, "load", spy)
    return seen


def write_topic_corpus(folder: Path) -> Path:
    """30 Markdown files of 100 short paragraphs, each 8 words of one of 40 topics of 30
    words (fixed seed): clustered vectors for recall tests. Returns ``folder``."""
    rng = np.random.default_rng(0)
    topics = [[f"w{t}x{j}" for j in range(30)] for t in range(40)]
    folder.mkdir()
    for f in range(30):
        paras = [" ".join(rng.choice(topics[rng.integers(40)], 8)) + "." for _ in range(100)]
        (folder / f"f{f}.md").write_text("\n\n".join(paras))
    return folder
