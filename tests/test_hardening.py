"""What a careless user or a hostile document must not break: the CLI's side of it.

Each test reproduces a defect found by trying ragkit as a careless user and an attacker
would; the connectors', filters', stores' and UI's own cases are in their test files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_eval_harness import write_beir

ROOT = Path(__file__).resolve().parent.parent


def rag(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=cwd,
        timeout=300,
    )


HASHING = ["--embed-model", "hashing-64", "--embed-backend", "hashing"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "keeper.md").write_text("# Lighthouse\n\nThe lighthouse keeper trims the wick.\n")
    return folder


def test_an_unknown_store_is_named_and_writes_nothing(tmp_path: Path, corpus: Path) -> None:
    data = tmp_path / "d" / "rag"
    for args in (
        ["ingest", str(corpus), "--store", "../elsewhere"],
        ["ingest", str(corpus), "--store", "qdrnt"],
        ["search", "keeper", "--store", "qdrnt"],
        ["ask", "keeper?", "--store", "qdrnt"],
        ["status", "--store", "qdrnt"],
        ["drop", "default", "--store", "qdrnt"],
    ):
        out = rag(*args, "--data-dir", str(data))
        assert out.returncode == 2, (args, out.stderr)
        assert "unknown store" in out.stderr and "known: chroma, faiss" in out.stderr, out.stderr
        assert not (tmp_path / "d").exists(), args  # no manifest, lock or phantom collection


def test_user_mistakes_are_one_line_and_exit_2(tmp_path: Path, corpus: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["ingest", str(corpus), "--data-dir", str(a_file)], "is a file, not a folder"),
        (["search", "x", "--data-dir", str(a_file)], "is a file, not a folder"),
        (["ingest", str(corpus), "--data-dir", ""], "data directory is empty"),
        (["ingest", str(corpus), "--max-file-mb", "nan"], "positive number of MB"),
        (["ingest", str(corpus), "--max-file-mb", "inf"], "positive number of MB"),
        (["search", "x", "--where", '{"a": '], "not valid JSON"),
    ]
    for args, message in cases:
        out = rag(*args, *([] if "--data-dir" in args else ["--data-dir", str(tmp_path / "r")]))
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rag: error: "), out.stderr
        assert message in lines[0], (args, lines[0])
        assert "unexpected error" not in out.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_document_text_and_names_cannot_drive_the_terminal(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    # A file name with a screen-clearing sequence, and text that sets the window title and
    # writes the clipboard (OSC 52), plus a right-to-left override.
    (folder / "evil\x1b[2J.md").write_text(
        "# Title \x1b]0;pwned\x07\n\nlighthouse keeper \x1b]52;c;SGVsbG8=\x07 trims \u202e the wick\n"
    )
    (folder / "empty\x1b[31m.md").write_text("")
    data = ["--data-dir", str(tmp_path / "rag")]
    runs = [
        rag("ingest", str(folder), *data, *HASHING),
        rag("search", "lighthouse keeper", *data),
        rag("ask", "who trims the wick?", *data, "--generator", "extractive"),
        rag("status", "--sources", *data),
    ]
    assert runs[0].returncode == 0 and "skipped: " in runs[0].stderr  # the empty file is listed
    assert "empty\\x1b[31m.md: empty file" in runs[0].stderr
    for out in runs[1:]:
        assert out.returncode == 0, out.stderr
    for out in runs:
        for stream in (out.stdout, out.stderr):
            assert "\x1b" not in stream and "\x07" not in stream and "\u202e" not in stream
    assert "evil\\x1b[2J.md" in runs[1].stdout  # the name is shown, escaped


def test_rag_eval_writes_its_results_under_the_data_dir(tmp_path: Path) -> None:
    ds = write_beir(
        tmp_path / "toy",
        {"d1": {"text": "Magma feeds volcanic eruptions."}, "d2": {"text": "Glaciers retreat."}},
        {"q1": "what feeds eruptions"},
        {"q1": {"d1": 1}},
    )
    work = tmp_path / "work"
    work.mkdir()
    data = tmp_path / "rag"
    args = ["eval", "retrieval", "--dataset", str(ds), "--modes", "bm25", "--json", *HASHING]
    out = rag(*args, "--data-dir", str(data), cwd=work)
    assert out.returncode == 0, out.stderr
    written = list((data / "eval-results").glob("retrieval-toy-*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["queries"] == 1
    assert list(work.iterdir()) == []  # nothing where the user stands
    chosen = tmp_path / "out" / "r.json"
    assert rag(*args, "--data-dir", str(data), "--out", str(chosen), cwd=work).returncode == 0
    assert chosen.is_file()


@pytest.fixture
def read_only() -> Iterator:
    """Mounts a folder read-only at another path (a bind mount, as a container volume)."""
    mounts: list[Path] = []

    def mount(src: Path, dst: Path) -> Path:
        dst.mkdir()
        if subprocess.run(["mount", "--bind", str(src), str(dst)]).returncode != 0:
            pytest.skip("bind mounts are not permitted here (needs root with CAP_SYS_ADMIN)")
        mounts.append(dst)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True)
        return dst

    yield mount
    for m in reversed(mounts):
        subprocess.run(["umount", str(m)], check=False)


def test_a_read_only_data_dir_can_be_queried(tmp_path: Path, corpus: Path, read_only) -> None:
    built = tmp_path / "built"
    assert rag("ingest", str(corpus), "--data-dir", str(built), *HASHING).returncode == 0
    expected = rag("search", "keeper", "--data-dir", str(built), "--json", "--mode", "hybrid")
    ro = read_only(built, tmp_path / "ro")
    with pytest.raises(OSError):
        (ro / "probe").write_text("x")
    data = ["--data-dir", str(ro)]
    found = rag("search", "keeper", *data, "--json", "--mode", "hybrid")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"] == json.loads(expected.stdout)["hits"]
    for args in (
        ["search", "keeper", "--mmr", "--mode", "bm25"],
        ["ask", "who trims the wick?", "--generator", "extractive"],
        ["status", "--sources"],
        ["collections"],
    ):
        out = rag(*args, *data)
        assert out.returncode == 0, (args, out.stderr)
    refused = rag("ingest", str(corpus), *data)
    assert refused.returncode == 1
    assert "read-only" in refused.stderr and "unexpected" not in refused.stderr
