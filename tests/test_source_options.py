"""A source plugin's own options and targets (rag/source.py): declared options become
``rag ingest`` flags and ``--source-opt`` pairs that reach the source, an undeclared one is
an error, and a source that claims a target is picked without ``--source``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rag.errors import ConfigError
from rag.source import SourceOptions
from tests.test_plugins import rag
from tests.toy_plugin import write_dist

#: A source of one document per target ``memo:<words>``; its ``shout`` option upper-cases
#: the text, its ``repeat`` option repeats it, and every document records the options seen.
MEMO_SOURCE = """
import json
from rag.source import SourceItem
from rag.types import Document


class MemoSource:
    name = "memo"
    description = "memos written on the command line"
    options = {"shout": "upper-case the memo (yes/no)", "repeat": "times to repeat it"}

    def __init__(self, options):
        self.options = options

    @classmethod
    def claims(cls, target):
        return target.startswith("memo:")

    def scan(self):
        for t in self.options.targets:
            yield SourceItem(t, len(t), 1.0)

    def load(self, item):
        text = item.id.removeprefix("memo:")
        if self.options.param("shout") == "yes":
            text = text.upper()
        text = " ".join([text] * int(self.options.param("repeat", "1")))
        seen = json.dumps(dict(self.options.params), sort_keys=True)
        return [Document(item.id, text, {"title": "memo", "seen": seen})]

    def covers(self, source_id):
        return source_id.startswith("memo:")

    def locate(self, source_id):
        return None
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "memo_source.py").write_text(textwrap.dedent(MEMO_SOURCE))
    write_dist(folder, "memo_source", {"ragkit.sources": {"memo": "memo_source:MemoSource"}})
    return folder


def ingest(site: Path, data: Path, *args: str) -> dict:
    out = rag(
        "--data-dir",
        str(data),
        "ingest",
        "--embed-backend",
        "hashing",
        "--embed-model",
        "hashing-64",
        "--json",
        *args,
        path=site,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def chunks(site: Path, data: Path) -> list[dict]:
    out = rag("--data-dir", str(data), "search", "--json", "--k", "5", "memo", path=site)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["hits"]


def test_a_claimed_target_picks_its_source_and_flags_reach_it(site: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    report = ingest(site, data, "memo:quiet words", "--shout", "yes", "--source-opt", "repeat=2")
    assert report["chunks"] == 1
    (hit,) = chunks(site, data)
    assert hit["text"] == "QUIET WORDS QUIET WORDS"
    assert json.loads(hit["metadata"]["seen"]) == {"shout": "yes", "repeat": "2"}
    help_text = rag("ingest", "--help", path=site).stdout
    assert "--shout" in help_text and "[memo] upper-case the memo" in help_text


def test_an_option_the_source_does_not_declare_is_an_error(site: Path, tmp_path: Path) -> None:
    out = rag(
        "--data-dir", str(tmp_path / "d"), "ingest", "memo:x", "--source-opt", "volume=11",
        path=site,
    )  # fmt: skip
    assert out.returncode == 2
    assert "the memo source takes no option volume (its options: repeat, shout)" in out.stderr
    folder = tmp_path / "docs"
    folder.mkdir()
    out = rag("--data-dir", str(tmp_path / "d"), "ingest", str(folder), "--shout", "yes", path=site)
    assert out.returncode == 2
    assert "the filesystem source takes no option shout" in out.stderr
    out = rag(
        "--data-dir", str(tmp_path / "d"), "ingest", "memo:x", "--source-opt", "=1", path=site
    )
    assert out.returncode == 2 and "KEY=VALUE" in out.stderr


def test_param_reads_the_last_value() -> None:
    options = SourceOptions(targets=("x",), params=(("a", "1"), ("b", "2"), ("a", "3")))
    assert options.param("a") == "3"
    assert options.param("c") is None and options.param("c", "d") == "d"


def test_unknown_params_are_refused_before_the_source_is_built() -> None:
    from rag.source import open_source

    with pytest.raises(ConfigError, match="the filesystem source takes no option depth"):
        open_source("filesystem", SourceOptions(targets=(".",), params=(("depth", "2"),)))
