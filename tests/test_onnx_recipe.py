"""Which ONNX graph the INT8 backend makes on which CPU, and what happens to an export made by
an older version of the exporter. Quick: the export steps are fakes (the real export runs in
tests/test_onnx_embed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.embeddings import onnx_export as ox

pytest_plugins = ["tests.export_support"]  # fake_export

FLAGS = "flags\t\t: fpu sse2 avx avx2 fma {}\n"


def test_an_export_of_an_older_version_is_stale_and_made_again(
    fake_export: tuple[ox.ModelSpec, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, calls = fake_export
    cache = tmp_path / "cache"
    current = ox.EXPORT_VERSION
    monkeypatch.setattr(ox, "EXPORT_VERSION", current - 1)
    old = ox.prepare_onnx(spec, cache, quantized=True)
    assert json.loads((old.parent / "export.json").read_text())["export_version"] == current - 1
    monkeypatch.setattr(ox, "EXPORT_VERSION", current)
    new = ox.prepare_onnx(spec, cache, quantized=True)
    # Not reused: made afresh in a folder of its own, and the old one deleted.
    assert new.parent != old.parent and new.is_file() and not old.parent.exists()
    assert [p.name for p in cache.iterdir()] == [new.parent.name]
    info = json.loads((new.parent / "export.json").read_text())
    assert info["export_version"] == ox.EXPORT_VERSION
    assert [c[0] for c in calls] == ["export", "fuse", "quantize"] * 2


@pytest.mark.parametrize(
    ("flags", "vnni"),
    [
        ("avx512f avx512_vnni", True),
        ("avx_vnni", True),
        ("amx_int8 amx_tile", True),
        ("avx512f avx512bw", False),
        ("", False),
    ],
)
def test_the_recipe_follows_the_cpu(
    flags: str, vnni: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + FLAGS.format(flags))
    real_open = open

    def fake_open(path: object, *args: object, **kwargs: object) -> object:
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", fake_open)
    assert ox.cpu_has_vnni() is vnni
    recipe = ox.default_int8_recipe()
    if vnni:  # signed weights at full VNNI rate, every product in INT8
        assert recipe == ox.VNNI_INT8_RECIPE
        assert (recipe.weight_type, recipe.per_channel, recipe.reduce_range) == (
            "qint8",
            True,
            False,
        )
        assert recipe.fused and not recipe.exclude
    else:  # unsigned weights: no int16 saturation without VNNI
        assert recipe == ox.AVX2_INT8_RECIPE and recipe.weight_type == "quint8"
    assert ox.VNNI_INT8_RECIPE.key != ox.AVX2_INT8_RECIPE.key  # two graphs, two file names


def test_an_unreadable_cpuinfo_means_no_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_file(*args: object, **kwargs: object) -> object:
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", no_file)
    assert ox.cpu_has_vnni() is False
    assert ox.default_int8_recipe() == ox.AVX2_INT8_RECIPE


def test_sessions_leave_out_the_slow_fusion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ort = pytest.importorskip("onnxruntime")
    seen: dict[str, object] = {}

    class Session:
        def __init__(self, path: str, so: object, **kwargs: object) -> None:
            seen.update(kwargs, path=path)

    monkeypatch.setattr(ort, "InferenceSession", Session)
    ox.onnx_session(tmp_path / "m.onnx", 2)
    assert seen["disabled_optimizers"] == ["SkipLayerNormFusion"]
    assert seen["providers"] == ["CPUExecutionProvider"]
