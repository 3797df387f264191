"""SIGKILL an ingest at random moments, run it again, and compare with a clean ingest: a
folder on every store, and the same files as a git repository (read from its objects) on
FAISS."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag import plugins
from rag.config import Settings
from tests.test_indexing import BACKENDS, snapshot
from tests.test_web_source import Resource, Site

SEEDS = [11, 23, 37]
FILES = 300


def make_folder(folder: Path, files: int = FILES) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    folder.mkdir(parents=True)
    for i in range(files):
        paras = [
            f"Paragraph {j} of file {i}. " + " ".join(rng.choice(words) for _ in range(110))
            for j in range(8)
        ]
        (folder / f"f{i:04d}.md").write_text(f"# File {i}\n\n" + "\n\n".join(paras))


def env_for(data_dir: Path, store: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "RAG_DATA_DIR": str(data_dir),
            "RAG_STORE": store,
            "RAG_EMBED_MODEL": "hashing-384",
            "RAG_EMBED_BACKEND": "hashing",
            "RAG_CHUNK_SIZE": "48",
            "RAG_CHUNK_OVERLAP": "8",
        }
    )
    return env


def make_repo(folder: Path, files: int) -> str:
    """A folder of ``files`` files committed as a git repository; its git target."""
    make_folder(folder, files)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Ann Author",
        "GIT_AUTHOR_EMAIL": "ann@example.com",
        "GIT_COMMITTER_NAME": "Ann Author",
        "GIT_COMMITTER_EMAIL": "ann@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "corpus"]):
        subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True)
    return f"git+{folder}@main"


def ingest(env: dict[str, str], target: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "ingest", target, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def settings_for(data_dir: Path, store: str) -> Settings:
    return Settings(
        data_dir=data_dir,
        store=store,
        embed_model="hashing-384",
        embed_backend="hashing",
        chunk_size=48,
        chunk_overlap=8,
    )


#: (source, store, files, seeds): the git source on one store, smaller, to keep it quick.
CASES = [("filesystem", store, FILES, SEEDS) for store in BACKENDS] + [
    ("git", "faiss", FILES // 2, SEEDS[:2])
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "store", "files", "seeds"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_sigkill_then_rerun_equals_clean_ingest(
    source: str, store: str, files: int, seeds: list[int], tmp_path: Path
) -> None:
    if plugins.get("stores", store).missing():
        pytest.skip(f"{store} is not installed")
    folder = tmp_path / "docs"
    if source == "git":
        target = make_repo(folder, files)
    else:
        make_folder(folder, files)
        target = str(folder)

    clean_dir = tmp_path / "clean"
    t0 = time.monotonic()
    proc = ingest(env_for(clean_dir, store), target)
    out, err = proc.communicate(timeout=600)
    duration = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert json.loads(out)["chunks"] > 6 * files
    expected = snapshot_of(clean_dir, store, tmp_path)

    for seed in seeds:
        rng = random.Random(seed)
        data_dir = tmp_path / f"killed-{seed}"
        env = env_for(data_dir, store)
        kills = 0
        # Kill twice per seed at random moments, then let a run finish.
        for _ in range(2):
            proc = ingest(env, target)
            time.sleep(rng.uniform(0.2, duration * 0.95))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=60)
        proc = ingest(env, target)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert snapshot_of(data_dir, store, tmp_path) == expected, f"seed {seed}, {kills} kills"


#: chromadb's Rust bindings can crash the reading process (SIGSEGV) on a collection whose
#: persisted segment a SIGKILL tore mid-write, instead of raising: chroma-core/chroma#7238
#: (a truncated segment after an interrupted flush), #7678 (SIGKILL during upserts). Seen
#: here once, in a CI run of this test (Rust ``_get`` under ``ChromaStore._scan``).
CHROMA_TORN_SEGMENT = (
    "chromadb segfaulted reading a collection re-ingested after SIGKILL: its Rust segment "
    "loader crashes on a segment torn mid-write instead of raising (chroma-core/chroma#7238)"
)


def snapshot_of(data_dir: Path, store: str, tmp_path: Path) -> dict:
    """:func:`snapshot` of ``data_dir``; for Chroma in a child process, so that chromadb's
    known crash on a torn segment (:data:`CHROMA_TORN_SEGMENT`) fails this test alone
    instead of killing the whole test session."""
    if store != "chroma":
        return snapshot(settings_for(data_dir, store))
    out = tmp_path / f"snapshot-{data_dir.name}.pickle"
    code = (
        "import pickle, sys; from pathlib import Path; "
        "from tests.test_crash import settings_for; from tests.test_indexing import snapshot; "
        "Path(sys.argv[2]).write_bytes(pickle.dumps(snapshot(settings_for(Path(sys.argv[1]), "
        "'chroma'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(data_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode == -signal.SIGSEGV:
        pytest.xfail(CHROMA_TORN_SEGMENT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pickle.loads(out.read_bytes())


def web_site(folder: Path) -> Site:
    """The files of ``folder`` as HTML pages under /docs/ of a loopback site, with an index
    page linking every one."""
    site = Site()
    names = sorted(p.name for p in folder.iterdir())
    site.resources["/robots.txt"] = Resource(b"User-agent: *\nAllow: /\n", "text/plain")
    links = "".join(f'<li><a href="{n[:-3]}.html">{n}</a></li>' for n in names)
    site.page("/docs/", f"<html><head><title>Index</title></head><body><ul>{links}</ul></body>")
    for name in names:
        title, *paras = (folder / name).read_text().split("\n\n")
        body = "".join(f"<p>{p}</p>" for p in paras)
        page = f"<html><head><title>{title[2:]}</title></head><body><h1>{title[2:]}</h1>{body}"
        site.page(f"/docs/{name[:-3]}.html", page + "</body></html>")
    return site


#: The web source's flags in the crash test: every page one link from the index, quickly.
WEB_FLAGS = ["--depth", "1", "--rate", "1000", "--max-pages", "1000", "--timeout", "10"]


def web_ingest(env: dict[str, str], url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "ingest", url, "--json", *WEB_FLAGS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def without_fetch_times(snap: dict) -> dict:
    """A snapshot less each chunk's ``fetched_at``: when a page was fetched differs between
    two crawls of the same site, and nothing else may."""
    chunks = {
        cid: (text, {k: v for k, v in meta.items() if k != "fetched_at"}, vec)
        for cid, (text, meta, vec) in snap["chunks"].items()
    }
    return {**snap, "chunks": chunks}


@pytest.mark.slow
def test_sigkill_web_crawl_then_rerun_equals_clean_ingest(tmp_path: Path) -> None:
    """The web source, killed during the crawl or while its pages are indexed (its state
    saved or not), then run again, ends where one clean crawl ends. FAISS, a sixth of the
    files, to keep it quick."""
    store, files = "faiss", FILES // 6
    if plugins.get("stores", store).missing():
        pytest.skip(f"{store} is not installed")
    make_folder(tmp_path / "docs", files)
    site = web_site(tmp_path / "docs")
    try:
        url = site.url("/docs/")
        clean_dir = tmp_path / "clean"
        t0 = time.monotonic()
        proc = web_ingest(env_for(clean_dir, store), url)
        out, err = proc.communicate(timeout=600)
        duration = time.monotonic() - t0
        assert proc.returncode == 0, err
        report = json.loads(out)
        assert report["added"] == files + 1 and report["failed"] == []
        expected = without_fetch_times(snapshot(settings_for(clean_dir, store)))

        for seed in SEEDS[:2]:
            rng = random.Random(seed)
            data_dir = tmp_path / f"killed-{seed}"
            env = env_for(data_dir, store)
            kills = 0
            for _ in range(2):
                proc = web_ingest(env, url)
                time.sleep(rng.uniform(0.2, duration * 0.95))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                proc.communicate(timeout=60)
            proc = web_ingest(env, url)
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
            got = without_fetch_times(snapshot(settings_for(data_dir, store)))
            assert got == expected, f"seed {seed}, {kills} kills"
        # And the crawl after that asks only conditionally, and changes nothing.
        site.requests()
        proc = web_ingest(env, url)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert json.loads(out)["unchanged"] == files + 1
        assert all(r.conditional and r.status == 304 for r in site.requests())
    finally:
        site.close()
