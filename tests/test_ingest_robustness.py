"""Bad input, concurrent writers and readers, and watch mode, through the real CLI."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_docs import encrypted_pdf_bytes, pdf_bytes

RAG = [sys.executable, "-m", "apps.cli"]


def rag(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*RAG, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    d = tmp_path / "junk"
    d.mkdir()
    (d / "good.md").write_text("# Good\n\nThe otter holds hands with its partner while sleeping.\n")
    (d / "good.txt").write_text("Saturn's rings are made mostly of water ice.\n")
    (d / "latin1.txt").write_bytes(
        "Le café crème et la crème brûlée sont délicieux à Noël.\n".encode("cp1252")
    )
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.md").write_text("   \n\n\t\n")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 40)
    valid = pdf_bytes([["A page about volcanoes and their magma chambers."]])
    (d / "truncated.pdf").write_bytes(valid[: len(valid) // 2])
    (d / "locked.pdf").write_bytes(
        encrypted_pdf_bytes(valid, user_password="secret", owner_password="owner")
    )
    (d / "big.txt").write_text("too large " * 20000)  # about 200 kB
    (d / "loop").symlink_to(d, target_is_directory=True)
    (d / "dangling.md").symlink_to(d / "nowhere.md")
    return d


def test_bad_inputs_are_reported_and_the_rest_is_ingested(
    hashing_env: dict, bad_folder: Path, tmp_path: Path
) -> None:
    # A path that does not exist is an error before anything is read.
    missing = tmp_path / "no-such-folder"
    nowhere = rag(hashing_env, "ingest", str(bad_folder), str(missing), "--json")
    assert nowhere.returncode == 2 and "no-such-folder: no such file" in nowhere.stderr
    assert nowhere.stdout == ""

    proc = rag(hashing_env, "ingest", str(bad_folder), "--max-file-mb", "0.1", "--json")
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    # Nothing to index is skipped (listed, not an error); what could not be read failed.
    skipped = {Path(f["path"]).name: f["reason"] for f in out["skipped"]}
    assert skipped == {"empty.txt": "empty file", "blank.md": "no text"}
    reasons = {Path(f["path"]).name: f["reason"] for f in out["failed"]}
    expected = {
        "binary.txt": "binary",
        "truncated.pdf": "PDF",
        "locked.pdf": "encrypted",
        "big.txt": "larger than",
        "loop": "symlink loop",
        "dangling.md": "broken symlink",
    }
    for name, words in expected.items():
        assert name in reasons, f"{name} was not reported: {reasons}"
        assert words in reasons[name], (name, reasons[name])
    assert set(reasons) == set(expected)
    assert out["added"] == 3  # good.md, good.txt and the cp1252 file

    hits = json.loads(rag(hashing_env, "search", "café crème brûlée Noël", "--json").stdout)["hits"]
    assert Path(hits[0]["source"]).name == "latin1.txt"
    assert "crème brûlée" in hits[0]["text"]
    assert hits[0]["metadata"]["encoding"] == "cp1252"


def _big_folder(folder: Path, files: int = 500) -> None:
    folder.mkdir()
    words = [f"w{i}" for i in range(3000)]
    for i in range(files):
        body = "\n\n".join(
            " ".join(words[(i * 7 + j * 13 + w) % 3000] for w in range(100)) for j in range(8)
        )
        (folder / f"f{i:04d}.md").write_text(f"# File {i}\n\n{body}\n")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["faiss", "pgvector"])
def test_second_ingest_is_refused_and_searches_keep_working(
    hashing_env: dict, tmp_path: Path, store: str
) -> None:
    folder = tmp_path / "big"
    _big_folder(folder)
    env = dict(hashing_env, RAG_STORE=store, RAG_CHUNK_SIZE="48", RAG_CHUNK_OVERLAP="8")
    # A first, small ingest so that the collection exists for the searches below.
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "seed.md").write_text("# Seed\n\nA seed document about lighthouses.\n")
    assert rag(env, "ingest", str(seed), "--json").returncode == 0
    writer = subprocess.Popen(
        [*RAG, "ingest", str(folder), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until the writer holds the collection's lock, so that it is the first writer.
        lock = Path(env["RAG_DATA_DIR"]) / "collections" / store / "default" / "ingest.lock"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and writer.poll() is None:
            if lock.exists() and lock.read_text().strip() == f"pid {writer.pid}":
                break
            time.sleep(0.05)
        refused = searched = 0
        while writer.poll() is None and time.monotonic() < deadline:
            second = rag(env, "ingest", str(folder), "--json")
            if second.returncode == 1 and "is being written by pid" in second.stderr:
                refused += 1
            found = rag(env, "search", "lighthouses", "--json")
            if writer.poll() is None:
                assert found.returncode == 0, found.stderr
                assert json.loads(found.stdout)["hits"], "a search during the ingest found nothing"
                searched += 1
            if refused and searched >= 2:
                break
        _, err = writer.communicate(timeout=600)
        assert writer.returncode == 0, err
        assert refused >= 1 and searched >= 2, (refused, searched)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    final = json.loads(rag(env, "ingest", str(folder), "--json").stdout)
    assert final["unchanged"] == 500 and final["embedded"] == 0


def test_watch_keeps_the_collection_in_sync(hashing_env: dict, tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nAlpha document about kites.\n")
    (folder / "b.md").write_text("# B\n\nBeta document about canoes.\n")
    proc = subprocess.Popen(
        [*RAG, "ingest", str(folder), "--watch", "--json"],
        env=hashing_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

    def next_report() -> dict:
        return json.loads(lines.get(timeout=60))

    try:
        assert next_report()["added"] == 2
        (folder / "a.md").write_text("# A\n\nAlpha document about kites and gliders.\n")
        assert next_report()["updated"] == 1
        (folder / "b.md").unlink()
        assert next_report()["deleted"] == 1
        (folder / "c.md").write_text("# C\n\nGamma document about sledges.\n")
        assert next_report()["added"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    hits = json.loads(rag(hashing_env, "search", "gliders", "--json").stdout)["hits"]
    assert {Path(h["source"]).name for h in hits} == {"a.md", "c.md"}


def test_a_missing_root_is_not_a_deletion(hashing_env: dict, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "keep.md").write_text("# Keep\n\nThis must survive an unmounted drive.\n")
    assert rag(hashing_env, "ingest", str(folder), "--json").returncode == 0
    moved = tmp_path / "moved"
    shutil.move(folder, moved)
    gone = rag(hashing_env, "ingest", str(folder), "--json")
    assert gone.returncode == 2 and "no such file or directory" in gone.stderr
    status = json.loads(rag(hashing_env, "status", "--json").stdout)
    assert status["chunks"] == 1 and status["sources"] == 1
    assert os.path.exists(moved / "keep.md")


def ingest_json(env: dict[str, str], *args: str) -> dict:
    proc = rag(env, "ingest", *args, "--json")
    assert proc.returncode in (0, 3), proc.stderr
    assert "unexpected error" not in proc.stderr
    return json.loads(proc.stdout)


def recorded(env: dict[str, str]) -> set[str]:
    hits = json.loads(rag(env, "search", "text", "--k", "50", "--json").stdout)["hits"]
    return {Path(h["source"]).name for h in hits}


def test_names_that_are_not_utf8_are_ingested(hashing_env: dict, tmp_path: Path) -> None:
    # The review's reproduction: one name in Latin-1 used to abort the whole ingest.
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "good.txt").write_text("ok, some text\n")
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.txt")
    with open(odd, "wb") as f:
        f.write(b"text in a file named in Latin-1\n")
    with open(os.path.join(os.fsencode(folder), b"z\xff.md"), "wb") as f:
        f.write(b"")  # skipped (empty), with a name that is not UTF-8 either
    out = ingest_json(hashing_env, str(folder))
    assert out["added"] == 2
    assert [Path(f["path"]).name for f in out["skipped"]] == ["z\\xff.md"]
    assert recorded(hashing_env) == {"good.txt", "caf\\xe9.txt"}
    # The text report too, and a second run that finds nothing changed.
    proc = rag(hashing_env, "ingest", str(folder))
    assert proc.returncode == 0 and "unexpected error" not in proc.stderr, proc.stderr
    assert "skipped" in proc.stderr and "z\\xff.md" in proc.stderr
    assert ingest_json(hashing_env, str(folder))["unchanged"] == 2


def test_a_narrower_include_keeps_what_it_no_longer_selects(
    hashing_env: dict, tmp_path: Path
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("a.md", "b.md", "c.txt", "d.txt"):
        (folder / name).write_text(f"Some text in {name}.\n")
    assert ingest_json(hashing_env, str(folder))["added"] == 4
    out = ingest_json(hashing_env, str(folder), "--include", "*.md")
    assert (out["deleted"], out["unchanged"]) == (0, 2)
    assert recorded(hashing_env) == {"a.md", "b.md", "c.txt", "d.txt"}
    # What the patterns select is still cleaned up; what they do not is left alone.
    (folder / "a.md").unlink()
    (folder / "c.txt").unlink()
    assert ingest_json(hashing_env, str(folder), "--include", "*.md")["deleted"] == 1
    assert recorded(hashing_env) == {"b.md", "c.txt", "d.txt"}
    assert ingest_json(hashing_env, str(folder), "--exclude", "d.txt")["deleted"] == 1
    assert recorded(hashing_env) == {"b.md", "d.txt"}


def test_content_reached_through_a_link_goes_with_it(hashing_env: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "real.md").write_text("Text that stays.\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.md").write_text("Text reached through a link.\n")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file_link.md").symlink_to(outside / "linked.md")
    assert ingest_json(hashing_env, str(root))["added"] == 2
    (root / "link").unlink()
    (root / "file_link.md").unlink()
    shutil.rmtree(outside)
    assert ingest_json(hashing_env, str(root))["deleted"] == 1
    assert recorded(hashing_env) == {"real.md"}


def test_a_bad_glob_is_a_one_line_usage_error(hashing_env: dict, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("x\n")
    proc = rag(hashing_env, "ingest", str(tmp_path), "--include", "[z-a]*")
    assert proc.returncode == 2
    assert "unexpected error" not in proc.stderr
    assert "[z-a]*" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
