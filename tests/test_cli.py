"""The `rag` command in real subprocesses: JSON shapes, persistence, errors and exit codes.

These runs use the model-free hashing embedder, so they test the plumbing quickly; the
end-to-end tests with the real model live in test_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_docs import write_docx, write_pdf

RAG = [sys.executable, "-m", "apps.cli"]


def rag(
    env: dict[str, str], *args: str, check: bool = True, timeout: int = 120
) -> subprocess.CompletedProcess:
    proc = subprocess.run([*RAG, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode not in (0,):
        raise AssertionError(f"rag {' '.join(args)} exited {proc.returncode}\n{proc.stderr}")
    return proc


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """One file of every supported format, a malformed PDF, a binary file, and ignored folders."""
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text(
        "The lighthouse keeper counts exactly 217 steps to the lamp room.\n"
    )
    (d / "guide.md").write_text(
        "# Field guide\n\n## Owls\n\nThe barn owl hunts by sound in total darkness.\n"
    )
    (d / "manual.rst").write_text(
        "Manual\n======\n\nCalibration\n-----------\n\nTurn the brass dial clockwise twice.\n"
    )
    (d / "page.html").write_text(
        "<html><head><title>Recipes</title><script>var x=1;</script></head><body>"
        "<h1>Bread</h1><p>Knead the dough for ten minutes.</p></body></html>"
    )
    (d / "table.csv").write_text("city,river\nVienna,Danube\nParis,Seine\n")
    write_pdf(
        d / "sub" / "report.pdf",
        [["Page one is about glaciers."], ["Page two reports the melt rate of 12 metres a year."]],
    )
    write_docx(d / "sub" / "letter.docx")
    (d / "broken.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\n"
    )  # truncated, no pages
    (d / "blob.txt").write_bytes(bytes(range(256)) * 20)
    (d / ".git").mkdir()
    (d / ".git" / "config.txt").write_text("should never be ingested")
    (d / "node_modules").mkdir()
    (d / "node_modules" / "readme.md").write_text("# should never be ingested")
    return d


def test_ingest_json_reports_counts_and_failures(hashing_env: dict, mixed_folder: Path) -> None:
    proc = rag(hashing_env, "ingest", str(mixed_folder), "--json", check=False)
    assert proc.returncode == 3, proc.stderr  # finished, but some files failed
    out = json.loads(proc.stdout)
    assert out["files"] == 9
    assert out["added"] == 7 and out["updated"] == out["deleted"] == out["unchanged"] == 0
    assert out["chunks"] >= 8 and out["embedded"] == out["chunks"] == out["total_chunks"]
    failed = {Path(f["path"]).name: f["reason"] for f in out["failed"]}
    assert set(failed) == {"broken.pdf", "blob.txt"}
    assert "PDF" in failed["broken.pdf"]
    assert "binary" in failed["blob.txt"]
    assert proc.stderr.strip() == ""  # no progress bar or noise when not on a terminal

    # Unchanged: nothing read, nothing embedded.
    again = json.loads(rag(hashing_env, "ingest", str(mixed_folder), "--json", check=False).stdout)
    assert again["unchanged"] == 7 and again["embedded"] == 0 and again["chunks"] == 0


def test_search_json_shape_and_metadata(hashing_env: dict, mixed_folder: Path) -> None:
    rag(hashing_env, "ingest", str(mixed_folder), "--json", check=False)
    out = json.loads(
        rag(hashing_env, "search", "melt rate of glaciers metres", "--k", "3", "--json").stdout
    )
    assert out["query"] == "melt rate of glaciers metres"
    assert len(out["hits"]) == 3
    top = out["hits"][0]
    assert set(top) == {"id", "text", "score", "source", "metadata"}
    assert top["source"].endswith("report.pdf")
    assert top["metadata"]["page"] == 2
    meta = top["metadata"]
    assert {"source", "title", "mtime", "content_hash", "file_type"} <= set(meta)
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)

    flt = json.loads(
        rag(hashing_env, "search", "dough", "--where", '{"file_type": "html"}', "--json").stdout
    )
    assert flt["hits"] and all(h["metadata"]["file_type"] == "html" for h in flt["hits"])
    assert flt["hits"][0]["metadata"]["heading"] == "Bread"


def test_persistence_collections_status_drop(hashing_env: dict, mixed_folder: Path) -> None:
    rag(
        hashing_env,
        "ingest",
        str(mixed_folder / "sub"),
        "--collection",
        "papers",
        "--json",
        check=False,
    )
    rag(hashing_env, "ingest", str(mixed_folder / "guide.md"), "--collection", "birds", "--json")
    cols = json.loads(rag(hashing_env, "collections", "--json").stdout)["collections"]
    by_name = {c["name"]: c for c in cols}
    assert set(by_name) == {"papers", "birds"}
    assert by_name["birds"]["sources"] == 1 and by_name["birds"]["chunks"] >= 1
    assert by_name["papers"]["sources"] == 2

    status = json.loads(rag(hashing_env, "status", "papers", "--json").stdout)
    assert status["chunks"] == by_name["papers"]["chunks"]
    assert status["embedder"] == {"model": "hashing-384", "backend": "hashing", "dim": 384}
    assert status["last_ingest"]["added"] == 2

    # Another process searches what the first wrote.
    hits = json.loads(
        rag(hashing_env, "search", "barn owl darkness", "-c", "birds", "--json").stdout
    )["hits"]
    assert hits[0]["source"].endswith("guide.md")

    rag(hashing_env, "drop", "birds")
    names = [
        c["name"]
        for c in json.loads(rag(hashing_env, "collections", "--json").stdout)["collections"]
    ]
    assert names == ["papers"]
    gone = rag(hashing_env, "search", "owl", "-c", "birds", check=False)
    assert gone.returncode == 1
    assert "does not exist" in gone.stderr


def test_errors_are_one_line_with_exit_codes(hashing_env: dict, tmp_path: Path) -> None:
    usage = rag(hashing_env, "search", check=False)
    assert usage.returncode == 2

    missing = rag(hashing_env, "search", "anything", "-c", "nothing-here", check=False)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("rag: error:")
    assert "Traceback" not in missing.stderr

    debug = rag(hashing_env, "search", "anything", "-c", "nothing-here", "--debug", check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr

    rag(hashing_env, "ingest", str(tmp_path), "--json", check=False)
    bad_filter = rag(hashing_env, "search", "x", "--where", '{"page": {"$regex": 1}}', check=False)
    assert bad_filter.returncode == 2 and "unknown operator" in bad_filter.stderr  # usage

    nowhere = rag(hashing_env, "ingest", str(tmp_path / "does-not-exist"), "--json", check=False)
    assert nowhere.returncode == 2 and nowhere.stdout == ""
    assert nowhere.stderr.strip().endswith("does-not-exist: no such file or directory")


def test_stores_lists_every_backend(hashing_env: dict) -> None:
    out = json.loads(rag(hashing_env, "stores", "--json").stdout)["stores"]
    assert {"faiss", "chroma", "qdrant", "pgvector"} <= {s["name"] for s in out}
    assert all(s["installed"] for s in out)


def test_embedder_mismatch_is_refused(hashing_env: dict, mixed_folder: Path) -> None:
    rag(hashing_env, "ingest", str(mixed_folder / "notes.txt"), "--json")
    env = dict(hashing_env, RAG_EMBED_MODEL="hashing-128")
    proc = rag(env, "search", "lighthouse", check=False)
    assert proc.returncode == 2  # the options asked for another model: a usage mistake
    assert "was built with the embedding model hashing-384" in proc.stderr


def test_global_options_before_or_after_the_command(
    hashing_env: dict, mixed_folder: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in hashing_env.items() if k != "RAG_DATA_DIR"}
    data = str(tmp_path / "elsewhere")
    rag(env, "--data-dir", data, "ingest", str(mixed_folder / "notes.txt"), "--json")
    out = json.loads(rag(env, "search", "lighthouse steps", "--data-dir", data, "--json").stdout)
    assert out["hits"][0]["source"].endswith("notes.txt")
