"""The architecture as tests: layers point down, no module imports one that imports it back.

The layers are import-linter contracts in pyproject.toml (``apps | eval`` over
``connectors | vectorstores`` over ``rag``), run here with ``lint-imports``; cycles are
found in grimp's import graph. Both see function-level (lazy) imports. Each check is also
shown to fail on a copy of the tree with one bad import added.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rag", "connectors", "vectorstores", "apps", "eval")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(out)


_GRAPH = """
import json, sys
import grimp
g = grimp.build_graph(*sys.argv[1:], cache_dir=None)
print(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}))
"""


def import_graph(root: Path) -> dict[str, set[str]]:
    """The import graph of the packages under ``root``, function-level imports included.
    Built in a fresh interpreter: in this one the packages are imported already, and
    grimp would read those rather than ``root``'s."""
    out = subprocess.run(
        [sys.executable, "-c", _GRAPH, *PACKAGES],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return {m: set(deps) for m, deps in json.loads(out.stdout).items()}


def copy_tree(dest: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_layers_hold() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 60  # the whole project was read
    assert cycles(graph) == []


@pytest.mark.parametrize(
    ("module", "bad_import"),
    [
        ("rag/types.py", "from vectorstores import faiss"),  # the ground floor reaching up
        ("connectors/parsers.py", "from vectorstores import faiss"),  # siblings
        ("eval/metrics.py", "from apps.cli import main"),  # siblings at the top
    ],
)
def test_a_layer_violation_fails_the_contract(tmp_path: Path, module: str, bad_import: str) -> None:
    tree = copy_tree(tmp_path)
    path = tree / module
    # Inside a function: lazy imports count as much as top-level ones.
    path.write_text(path.read_text() + f"\n\ndef _up():\n    {bad_import}\n")
    out = lint_imports(tree)
    assert out.returncode == 1, out.stdout[-2000:]
    assert "BROKEN" in out.stdout


def test_a_cycle_is_found(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    path = tree / "rag" / "filters.py"
    path.write_text(path.read_text() + "\n\ndef _back():\n    from rag import store\n")
    found = cycles(import_graph(tree))
    assert found and "rag.filters" in found[0] and "rag.store" in found[0]


def test_cycles_finds_components() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert cycles({"a": {"a"}}) == [["a"]]


def test_rag_imports_no_driver_and_help_no_model_runtime() -> None:
    code = (
        "import sys\n"
        "import rag, rag.store, rag.source, rag.plugins, rag.commands, rag.collection\n"
        "from apps.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('faiss', 'chromadb', 'qdrant_client', 'qdrant_edge', 'psycopg', 'torch',\n"
        "         'sentence_transformers', 'onnxruntime', 'xllamacpp', 'streamlit')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
