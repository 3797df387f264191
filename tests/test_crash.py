"""SIGKILL an ingest at random moments, run it again, and compare with a clean ingest."""

from __future__ import annotations

import json
import os
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

SEEDS = [11, 23, 37]
FILES = 300


def make_folder(folder: Path) -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    folder.mkdir(parents=True)
    for i in range(FILES):
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


def ingest(env: dict[str, str], folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "ingest", str(folder), "--json"],
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


@pytest.mark.slow
@pytest.mark.parametrize("store", BACKENDS)
def test_sigkill_then_rerun_equals_clean_ingest(store: str, tmp_path: Path) -> None:
    if plugins.get("stores", store).missing():
        pytest.skip(f"{store} is not installed")
    folder = tmp_path / "docs"
    make_folder(folder)

    clean_dir = tmp_path / "clean"
    t0 = time.monotonic()
    proc = ingest(env_for(clean_dir, store), folder)
    out, err = proc.communicate(timeout=600)
    duration = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert json.loads(out)["chunks"] > 2000
    expected = snapshot(settings_for(clean_dir, store))

    for seed in SEEDS:
        rng = random.Random(seed)
        data_dir = tmp_path / f"killed-{seed}"
        env = env_for(data_dir, store)
        kills = 0
        # Kill twice per seed at random moments, then let a run finish.
        for _ in range(2):
            proc = ingest(env, folder)
            time.sleep(rng.uniform(0.2, duration * 0.95))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=60)
        proc = ingest(env, folder)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert snapshot(settings_for(data_dir, store)) == expected, f"seed {seed}, {kills} kills"
