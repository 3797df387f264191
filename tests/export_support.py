"""A fake ONNX export for tests of the model cache: export steps that write small files and
log what they did, so that what is made, kept and deleted can be checked in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.embeddings import onnx_export as ox


@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[ox.ModelSpec, list]:
    """A model spec, and export steps that write small files and log what they did."""
    root = tmp_path / "org" / "tiny-model"
    root.mkdir(parents=True)
    (root / "config.json").write_text("{}")
    spec = ox.ModelSpec("org/tiny-model", root, root, "mean", True, 16, False, "", 8)
    calls: list[tuple[str, str]] = []

    def export(spec: ox.ModelSpec, dest: Path) -> None:
        calls.append(("export", dest.name))
        dest.write_bytes(b"plain" * 100)

    def fuse(spec: ox.ModelSpec, src: Path, dest: Path) -> bool:
        assert src.is_file()
        calls.append(("fuse", src.name))
        dest.write_bytes(b"fused" * 100)
        return True

    def quantize(spec: ox.ModelSpec, src: Path, dest: Path, recipe: ox.QuantRecipe) -> None:
        assert src.is_file()
        calls.append(("quantize", src.name))
        dest.write_bytes(b"int8" * 25)

    monkeypatch.setattr(ox, "export_onnx", export)
    monkeypatch.setattr(ox, "fuse_onnx", fuse)
    monkeypatch.setattr(ox, "quantize_onnx", quantize)
    return spec, calls
