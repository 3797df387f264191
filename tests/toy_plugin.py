"""A third-party plugin package, written into a folder by the tests that install it.

``write_package(folder)`` creates ``ragkit_toy`` (a vector store kept in a JSON file per
collection, and a ``hello`` command) with a ``.dist-info`` that declares them in the
``ragkit.stores`` and ``ragkit.commands`` entry-point groups, exactly as ``pip install``
would leave a package. Putting the folder on ``sys.path`` (or ``PYTHONPATH``) installs it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

STORE_SOURCE = '''
"""A toy vector store: exact cosine search over a JSON file per collection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rag.commands import Command, add_collection_options, settings_from_args
from rag.errors import CollectionNotFoundError, DimensionMismatchError
from rag.filters import ALL_OPS, evaluate
from rag.store import Capabilities, StoreBase, StoreConfig
from rag.types import Chunk, Hit


class ToyStore(StoreBase):
    """Exact search in memory, saved to a JSON file on every write."""

    name = "toy"
    description = "a toy store from a third-party package"
    capabilities = Capabilities(filter_ops=ALL_OPS, exact_search=True)

    def __init__(self, collection: str, *, dim: int, config: StoreConfig, create: bool = True):
        self.collection, self.dim = collection, dim
        self.file = Path(config.data_dir) / f"{collection}.json"
        self.rows: dict[str, tuple[Chunk, list[float]]] = {}
        if self.file.exists():
            data = json.loads(self.file.read_text())
            if data["dim"] != dim:
                raise DimensionMismatchError(f"toy collection {collection!r} is {data['dim']}-d")
            for cid, text, meta, vec in data["rows"]:
                self.rows[cid] = (Chunk(cid, text, meta), vec)
        elif not create:
            raise CollectionNotFoundError(f"toy collection {collection!r} does not exist")
        else:
            self._save()

    def _save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        rows = [[c.id, c.text, c.metadata, v] for c, v in self.rows.values()]
        self.file.write_text(json.dumps({"dim": self.dim, "rows": rows}))

    def _upsert(self, chunks, vectors):
        for chunk, vec in zip(chunks, vectors, strict=True):
            self.rows[chunk.id] = (chunk, vec.tolist())
        self._save()

    def _delete(self, ids):
        for i in ids:
            self.rows.pop(i, None)
        self._save()

    def _search(self, vector, k, where):
        hits = [
            Hit(c.id, float(np.dot(np.asarray(v, dtype=np.float32), vector)), c)
            for c, v in self.rows.values()
            if evaluate(where, c.metadata)
        ]
        return sorted(hits, key=lambda h: (-h.score, h.id))[:k]

    def _get(self, ids):
        return [self.rows[i][0] for i in ids if i in self.rows]

    def _scan(self, batch_size):
        rows = list(self.rows.values())
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            yield [c for c, _ in part], np.asarray([v for _, v in part], dtype=np.float32)

    def count(self):
        return len(self.rows)

    def drop(self):
        self.rows.clear()
        self.file.unlink(missing_ok=True)

    def close(self):
        pass


def _configure(parser):
    add_collection_options(parser)
    parser.add_argument("--shout", action="store_true")


def _run(args):
    text = f"hello from the toy plugin, collection {settings_from_args(args).collection}"
    print(text.upper() if args.shout else text)
    return 0


hello = Command(help="say hello (a command from a plugin)", configure=_configure, run=_run)
'''


def write_dist(folder: Path, package: str, entry_points: dict[str, dict[str, str]]) -> None:
    """A ``.dist-info`` folder for ``package`` declaring ``entry_points``."""
    info = folder / f"{package}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))


def write_package(folder: Path) -> Path:
    """``ragkit_toy`` in ``folder``, installed there as a distribution; returns ``folder``."""
    pkg = folder / "ragkit_toy"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(STORE_SOURCE))
    write_dist(
        folder,
        "ragkit_toy",
        {
            "ragkit.stores": {"toy": "ragkit_toy:ToyStore"},
            "ragkit.commands": {"hello": "ragkit_toy:hello"},
        },
    )
    return folder
