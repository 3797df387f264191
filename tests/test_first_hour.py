"""What a new user met in their first hour: exit codes a script can rely on, paths that can
be filtered on as they are shown, and the CLI's rough edges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HASHING = ["--embed-model", "hashing-64", "--embed-backend", "hashing"]


def rag(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAG_"))}
    return subprocess.run(
        [sys.executable, "-m", "apps.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=300,
    )


def test_nothing_to_index_is_skipped_not_failed(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("# Notes\n\nThe lighthouse keeper trims the wick.\n")
    (folder / "empty.md").write_text("")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n")
    (folder / ".hidden.png").write_bytes(b"x")  # hidden: neither read nor listed
    data = ["--data-dir", str(tmp_path / "rag"), *HASHING]
    for _ in range(2):  # every run, as a cron job sees it
        out = rag("ingest", str(folder), *data, "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["failed"] == []
        assert {Path(s["path"]).name: s["reason"] for s in report["skipped"]} == {
            "empty.md": "empty file",
            "photo.png": "unsupported file type '.png'",
        }
    text = rag("ingest", str(folder), *data)
    assert text.returncode == 0
    assert "skipped: " in text.stderr and "photo.png" in text.stderr
    # What could not be read still fails, with exit 3.
    (folder / "locked.md").write_text("x")
    (folder / "locked.md").chmod(0)
    if os.geteuid() != 0:
        assert rag("ingest", str(folder), *data).returncode == 3


def test_a_file_that_becomes_empty_loses_its_chunks(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nThe otter sleeps holding hands.\n")
    data = ["--data-dir", str(tmp_path / "rag"), *HASHING]
    assert rag("ingest", str(folder), *data).returncode == 0
    (folder / "a.md").write_text("")
    out = json.loads(rag("ingest", str(folder), *data, "--json").stdout)
    assert out["deleted"] == 1 and out["total_chunks"] == 0


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    out = rag("ingest", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "rag"), *HASHING)
    assert out.returncode == 2 and out.stdout == ""
    assert "nowhere: no such file or directory" in out.stderr
    assert not (tmp_path / "rag").exists()


def test_sources_filter_as_they_are_shown(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "rag")]
    assert rag("ingest", "data", *data, *HASHING, cwd=ROOT).returncode == 0
    shown = rag("search", "vector stores", *data, "--k", "3", cwd=ROOT).stdout
    assert "data/01-overview.md" in shown or "data/08-vector-stores.md" in shown
    for where, expected in (
        ('{"source": "data/08-vector-stores.md"}', {"08-vector-stores.md"}),
        ('{"source": {"$in": ["data/08-vector-stores.md", "data/01-overview.md"]}}', None),
        ('{"source": {"$ne": "data/08-vector-stores.md"}}', None),
    ):
        out = rag(
            "search", "vector stores", *data, "--k", "20", "--where", where, "--json", cwd=ROOT
        )
        assert out.returncode == 0, out.stderr
        names = {Path(h["source"]).name for h in json.loads(out.stdout)["hits"]}
        assert names, where
        if expected is not None:
            assert names == expected
        elif "$ne" in where:
            assert "08-vector-stores.md" not in names
        else:
            assert names <= {"08-vector-stores.md", "01-overview.md"}


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    data = ["--data-dir", str(tmp_path_factory.mktemp("fh") / "rag")]
    assert rag("ingest", str(ROOT / "data"), *data, *HASHING).returncode == 0
    return data


def test_an_empty_query_is_refused(collection: list[str]) -> None:
    for args in (["search", ""], ["search", "   "], ["ask", "", "--generator", "extractive"]):
        out = rag(*args, *collection)
        assert out.returncode == 2 and "is empty" in out.stderr, (args, out.stderr)


def test_openai_without_an_endpoint_says_what_to_set(collection: list[str]) -> None:
    out = rag("ask", "What is the default store?", *collection, "--generator", "openai")
    assert out.returncode == 2
    assert "OPENAI_BASE_URL" in out.stderr and "OPENAI_API_KEY" in out.stderr
    assert "api.openai.com" not in out.stderr


def test_a_chunk_size_past_the_model_is_refused_not_clamped(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nSome words.\n")
    data = ["--data-dir", str(tmp_path / "rag"), *HASHING]
    out = rag("ingest", str(folder), *data, "--chunk-size", "1000")
    assert out.returncode == 2 and "chunk size 1000" in out.stderr and "at most 254" in out.stderr
    out = rag("ingest", str(folder), *data, "--chunk-size", "100", "--chunk-overlap", "60")
    assert out.returncode == 2 and "at most 50" in out.stderr
    assert rag("ingest", str(folder), *data, "--chunk-size", "254").returncode == 0
