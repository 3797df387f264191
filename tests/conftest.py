"""Shared fixtures. Tests run offline: nothing may be downloaded."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests choose generators explicitly; an endpoint in the developer's shell must not leak in.
for var in (
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "RAG_DATA_DIR",
    "RAG_COLLECTION",
    "RAG_STORE",
    "RAG_EMBED_MODEL",
    "RAG_EMBED_BACKEND",
    "RAG_GENERATOR",
    "RAG_PG_DSN",
):
    os.environ.pop(var, None)

# One folder for the ONNX exports of the whole run (the default backend is INT8 ONNX): each
# test's data directory would otherwise export the model afresh.
_MODELS_DIR = Path(tempfile.mkdtemp(prefix="ragkit-models-"))
_MODELS_DIR.chmod(0o755)
os.environ["RAG_MODELS_DIR"] = str(_MODELS_DIR)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
DATA = ROOT / "data"


@pytest.fixture
def shared_datasets() -> Path:
    """../shared/datasets: skipped where absent (a user's clone), an error in CI."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing, and CI must run the dataset tests")
        pytest.skip(f"{SHARED} is not present (it sits beside the repository in CI)")
    return SHARED


@pytest.fixture
def hashing_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI runs with the model-free hashing embedder in a fresh data dir."""
    env = dict(os.environ)
    env.update(
        {
            "RAG_DATA_DIR": str(tmp_path / "rag"),
            "RAG_EMBED_MODEL": "hashing-384",
            "RAG_EMBED_BACKEND": "hashing",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def sample_corpus(tmp_path: Path) -> Path:
    """A private copy of data/ that a test may change."""
    dest = tmp_path / "corpus"
    shutil.copytree(DATA, dest)
    return dest


def pytest_configure(config: pytest.Config) -> None:
    # As root (CI, containers) the embedded PostgreSQL runs as an unprivileged account, which
    # must be able to enter the test folders, and pytest makes every one of them 0700.
    # ragkit never loosens permissions itself, so the test harness makes its own folders
    # traversable (o+x, not readable): a private base under /tmp, and each folder pytest
    # creates in it.
    if os.geteuid() != 0:
        return
    from _pytest.tmpdir import TempPathFactory

    if not config.option.basetemp and not hasattr(config, "workerinput"):
        base = Path(tempfile.mkdtemp(prefix="ragkit-pytest-"))
        base.chmod(0o711)
        config.option.basetemp = str(base / "t")
        config._ragkit_basetemp = base  # type: ignore[attr-defined]
    original_base, original_mktemp = TempPathFactory.getbasetemp, TempPathFactory.mktemp

    def getbasetemp(self: TempPathFactory) -> Path:
        path = original_base(self)
        path.chmod(0o711)
        return path

    def mktemp(self: TempPathFactory, basename: str, numbered: bool = True) -> Path:
        path = original_mktemp(self, basename, numbered)
        path.chmod(0o711)
        return path

    TempPathFactory.getbasetemp = getbasetemp  # type: ignore[method-assign]
    TempPathFactory.mktemp = mktemp  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        shutil.rmtree(_MODELS_DIR, ignore_errors=True)
    base = getattr(config, "_ragkit_basetemp", None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)
