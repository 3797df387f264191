"""The git connector on repositories the tests create: tracked files at a ref, read from the
object database, incremental by blob id; clones of URLs; what is skipped and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors import gitrepo
from connectors.git import GitSource, GitTarget, parse_target
from rag.collection import Collection, open_collection
from rag.config import Settings
from rag.errors import ConfigError, NothingToIndex
from rag.source import SourceItem, SourceOptions, pick_source
from rag.types import Failure, Skipped
from tests.source_support import spy_loads

ALPHA = "# Alpha\n\nThe alpha file speaks of herons that fish at dawn in the harbour.\n"
BETA = "# Beta\n\nThe beta file describes pelicans guarding the old lighthouse.\n"
GAMMA = "# Gamma\n\nThe gamma file lists cormorants drying their wings on the pier.\n"
DELTA = "Delta notes: gulls quarrel over the fishing boats every morning.\n"


class Repo:
    """A git repository in a folder, committed to with fixed dates and authors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tick = 0
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, author: str = "Ann Author") -> str:
        self.tick += 1
        date = f"2024-03-0{1 + self.tick % 9}T10:00:{self.tick % 60:02d}+00:00"
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": "ann@example.com",
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": "ann@example.com",
            "GIT_AUTHOR_DATE": date,
            "GIT_COMMITTER_DATE": date,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def write(self, rel: str, content: str | bytes) -> None:
        path = self.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    def commit(self, message: str, author: str = "Ann Author", paths: tuple[str, ...] = ()) -> str:
        self.git("add", "-A", "--", *paths)
        self.git("commit", "-q", "-m", message, author=author)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path / "repo")
    r.write("alpha.md", ALPHA)
    r.write("beta.md", BETA)
    r.write("gamma.md", GAMMA)
    r.write("notes/delta.txt", DELTA)
    r.write(".gitignore", "*.log\nscratch/\n")
    r.commit("first")
    return r


def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "rag",
        store="faiss",
        embed_model="hashing-384",
        embed_backend="hashing",
        chunk_size=48,
        chunk_overlap=8,
    )


@pytest.fixture
def col(tmp_path: Path) -> Iterator[Collection]:
    with open_collection(settings(tmp_path), create=True) as c:
        yield c


def chunks_by_source(col: Collection) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for batch, _ in col.store.scan(batch_size=100):
        for c in batch:
            out.setdefault(str(c.metadata["source"]), []).append({"text": c.text, **c.metadata})
    return out


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids GitSource.load reads, in order."""
    return spy_loads(monkeypatch, GitSource)


def test_a_commit_that_changes_one_file_and_deletes_another_costs_one_file(
    repo: Repo, col: Collection, loads: list[str]
) -> None:
    first = repo.git("rev-parse", "HEAD")
    # Not committed, so never read: an untracked file, an ignored one, a change in the tree.
    repo.write("untracked.md", "# Untracked\n\nNot in any commit.\n")
    repo.write("debug.log", "ignored by .gitignore\n")
    repo.write("scratch/draft.md", "# Draft\n\nIgnored folder.\n")
    repo.write("alpha.md", "# Alpha\n\nAn edit in the working tree only.\n")
    target = f"git+{repo.path}@main"
    prefix = f"git+{repo.path.resolve()}@main:"

    report = col.ingest([target], source="git")
    assert (report.added, report.failed) == (4, [])
    found = chunks_by_source(col)
    assert sorted(found) == [
        prefix + p for p in ("alpha.md", "beta.md", "gamma.md", "notes/delta.txt")
    ]
    alpha = found[prefix + "alpha.md"]
    assert "herons" in " ".join(c["text"] for c in alpha)  # the committed text
    meta = alpha[0]
    assert meta["path"] == "alpha.md" and meta["repo"] == str(repo.path.resolve())
    assert meta["ref"] == "main" and meta["commit"] == first
    assert meta["author"] == "Ann Author" and meta["commit_date"].startswith("2024-03-0")
    assert meta["blob"] == repo.git("rev-parse", "main:alpha.md")

    repo.git("checkout", "-q", "--", "alpha.md")
    repo.write("beta.md", BETA + "\nA new paragraph about the night heron colony.\n")
    (repo.path / "gamma.md").unlink()
    second = repo.commit("second", author="Bo Builder", paths=("beta.md", "gamma.md"))
    loads.clear()

    report = col.ingest([target], source="git")
    assert loads == [prefix + "beta.md"]  # read from the repository: only the changed file
    assert (report.added, report.updated, report.deleted, report.unchanged) == (0, 1, 1, 2)
    found = chunks_by_source(col)
    assert sorted(found) == [prefix + p for p in ("alpha.md", "beta.md", "notes/delta.txt")]
    beta = found[prefix + "beta.md"]
    assert report.chunks == len(beta) and 0 < report.embedded <= len(beta)
    assert {c["commit"] for c in beta} == {second} and beta[0]["author"] == "Bo Builder"
    assert found[prefix + "alpha.md"][0]["commit"] == first  # unchanged: untouched

    loads.clear()
    again = col.ingest([target], source="git")
    assert loads == [] and (again.unchanged, again.chunks, again.deleted) == (3, 0, 0)


def test_a_ref_other_than_head_branches_tags_and_commits(repo: Repo, col: Collection) -> None:
    first = repo.git("rev-parse", "HEAD")
    repo.git("tag", "v1")
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("feature.md", "# Feature\n\nOnly on the feature branch: albatrosses.\n")
    repo.commit("feature work")
    repo.git("checkout", "-q", "main")  # HEAD is main again

    col.ingest([f"git+{repo.path}@feature"], source="git")
    sources = set(chunks_by_source(col))
    base = f"git+{repo.path.resolve()}"
    assert f"{base}@feature:feature.md" in sources
    assert all(s.startswith(f"{base}@feature:") for s in sources)

    # A tag beside it: its own ids, and the feature branch's stay.
    report = col.ingest([f"git+{repo.path}@v1"], source="git")
    assert report.added == 4 and report.deleted == 0
    sources = set(chunks_by_source(col))
    assert f"{base}@v1:alpha.md" in sources and f"{base}@feature:feature.md" in sources
    assert f"{base}@v1:feature.md" not in sources

    # A commit id, and the default: HEAD (main, without the feature file).
    items = list(GitSource(SourceOptions((f"git+{repo.path}@{first[:10]}",))).scan())
    assert {i.id.rsplit(":", 1)[1] for i in items if isinstance(i, SourceItem)} == {
        "alpha.md",
        "beta.md",
        "gamma.md",
        "notes/delta.txt",
    }
    head = [i.id for i in GitSource(SourceOptions((f"git+{repo.path}",))).scan()]
    assert f"{base}@HEAD:alpha.md" in head and not any("feature.md" in i for i in head)


def test_an_unknown_ref_is_reported_and_removes_nothing(repo: Repo, col: Collection) -> None:
    col.ingest([f"git+{repo.path}@main"], source="git")
    before = chunks_by_source(col)
    report = col.ingest([f"git+{repo.path}@main", f"git+{repo.path}@nope"], source="git")
    assert [(f.source, f.reason) for f in report.failed] == [
        (
            f"git+{repo.path.resolve()}@nope",
            f"no branch, tag or commit named 'nope' in {repo.path.resolve()}",
        )
    ]
    assert report.deleted == 0 and chunks_by_source(col) == before


def test_a_clone_url_is_mirrored_in_the_collection_and_fetched(
    repo: Repo, col: Collection, loads: list[str]
) -> None:
    url = f"file://{repo.path}"
    report = col.ingest([f"git+{url}@main"], source="git")
    assert report.added == 4 and report.failed == []
    clones = list((col.path / "sources" / "git").iterdir())
    assert len(clones) == 1 and clones[0].name.startswith("repo-")
    assert f"git+{url}@main:beta.md" in chunks_by_source(col)

    repo.write("beta.md", BETA + "\nFetched: a second paragraph.\n")
    repo.commit("upstream change")
    loads.clear()
    report = col.ingest([f"git+{url}@main"], source="git")
    assert loads == [f"git+{url}@main:beta.md"] and report.updated == 1

    unreachable = col.ingest([f"git+file://{repo.path.parent}/missing@main"], source="git")
    assert len(unreachable.failed) == 1 and "could not clone" in unreachable.failed[0].reason
    assert unreachable.deleted == 0


def test_binary_unsupported_links_submodules_hidden_and_patterns(tmp_path: Path) -> None:
    r = Repo(tmp_path / "repo")
    r.write("readme.md", "# Readme\n\nText.\n")
    r.write("data.txt", b"\x00\x01\x02binary\x00" * 20)
    r.write("logo.png", b"\x89PNG\r\n\x1a\n")
    r.write(".github/guide.md", "# Hidden folder\n")
    r.write("node_modules/pkg/readme.md", "# Vendored\n")
    r.write("docs/guide.md", "# Guide\n\nMore text.\n")
    r.write("empty.md", "")
    os.symlink("readme.md", r.path / "link.md")
    r.git("add", "-A")
    # A submodule: a commit in the tree (of any repository; this one's own will do).
    r.git("commit", "-q", "-m", "files")
    head = r.git("rev-parse", "HEAD")
    r.git("update-index", "--add", "--cacheinfo", f"160000,{head},vendor/lib")
    r.git("commit", "-q", "-m", "submodule")
    src = GitSource(SourceOptions((f"git+{r.path}",), exclude=("docs/**",)))
    out = list(src.scan())
    prefix = f"git+{r.path.resolve()}@HEAD:"
    items = [i.id[len(prefix) :] for i in out if isinstance(i, SourceItem)]
    skipped = {s.source[len(prefix) :]: s.reason for s in out if isinstance(s, Skipped)}
    assert items == ["data.txt", "empty.md", "readme.md"]
    assert skipped == {
        "link.md": "a symbolic link: not followed",
        "logo.png": "unsupported file type '.png'",
        "vendor/lib": "a submodule: ingest its repository as a target of its own",
    }
    by_id = {i.id: i for i in out if isinstance(i, SourceItem)}
    with pytest.raises(NothingToIndex, match="binary file"):
        src.load(by_id[prefix + "data.txt"])
    with pytest.raises(NothingToIndex, match="empty file"):
        src.load(by_id[prefix + "empty.md"])
    assert src.covers(prefix + "readme.md") and src.covers(prefix + "gone.md")
    assert not src.covers(prefix + "docs/guide.md")  # excluded: left alone, not deleted
    assert not src.covers(prefix + "logo.png") and not src.covers("git+/elsewhere@HEAD:a.md")
    assert src.locate(prefix + "readme.md") == by_id[prefix + "readme.md"]
    assert src.locate(prefix + "gone.md") is None

    # Oversized blobs are failures with the limit, before anything is read.
    small = GitSource(SourceOptions((f"git+{r.path}",), exclude=("docs/**",), max_bytes=10))
    failed = [f for f in small.scan() if isinstance(f, Failure)]
    assert [f.source for f in failed] == [prefix + "data.txt", prefix + "readme.md"]
    assert "larger than the 10 B limit" in failed[0].reason


def test_history_names_the_last_change_of_each_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gitrepo, "READ_BYTES", 5)  # tokens cut at every read's end
    r = Repo(tmp_path / "repo")
    odd = "dir/with space\nand é.md"
    r.write("old.md", "# Old\n")
    r.write("gone.md", "# Gone\n")
    r.write(odd, "first")
    first = r.commit("one")
    r.write("churn.md", "1")
    (r.path / "gone.md").unlink()
    second = r.commit("two", author="Bo Builder")
    r.write("churn.md", "2")
    r.write(odd, "second")
    third = r.commit("three", author="Cy Coder")
    procs: list = []
    history = gitrepo.History(str(r.path / ".git"), third, procs)
    try:
        assert history.last_change(odd.encode()).commit == third
        assert history.last_change(b"old.md").commit == first
        change = history.last_change(b"churn.md")
        assert (change.commit, change.author) == (third, "Cy Coder")
        assert change.date.startswith("2024-03-0") and change.time > 1.7e9
        # A path no commit shows: the ingested commit stands in.
        assert history.last_change(b"never.md").commit == third
        # The deletion in the second commit is passed over: the walk names the first.
        assert second != first and history.last_change(b"gone.md").commit == first
    finally:
        gitrepo.stop(procs)
    assert procs == []


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("git+/srv/repo", GitTarget("/srv/repo", "HEAD", False)),
        ("git+/srv/repo@main", GitTarget("/srv/repo", "main", False)),
        ("git+/srv/repo@feature/x", GitTarget("/srv/repo", "feature/x", False)),
        ("git+https://host/o/r.git@v1.2", GitTarget("https://host/o/r.git", "v1.2", True)),
        ("git+https://me@host/o/r.git", GitTarget("https://me@host/o/r.git", "HEAD", True)),
        ("git+ssh://git@host/o/r@dev", GitTarget("ssh://git@host/o/r", "dev", True)),
        ("git+git@github.com:o/r.git@main", GitTarget("git@github.com:o/r.git", "main", True)),
        ("git+git@github.com:o/r.git", GitTarget("git@github.com:o/r.git", "HEAD", True)),
    ],
)
def test_targets(target: str, expected: GitTarget) -> None:
    assert parse_target(target) == expected


def test_bad_targets_are_clear_errors(tmp_path: Path, repo: Repo) -> None:
    with pytest.raises(ConfigError, match="git\\+<repository>"):
        parse_target("git+")
    with pytest.raises(ConfigError, match="not a branch, tag or commit name"):
        parse_target("git+/srv/repo@a:b")
    with pytest.raises(ConfigError) as info:
        parse_target("git+https://me:s3cret-token@host/o/r.git@main")
    assert "s3cret-token" not in str(info.value) and "https://me:***@host" in str(info.value)
    with pytest.raises(ConfigError, match="no such directory"):
        GitSource(SourceOptions((f"git+{tmp_path}/nowhere",)))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="is not a git repository"):
        GitSource(SourceOptions((f"git+{tmp_path}/plain",)))
    with pytest.raises(ConfigError, match=r"a folder inside a repository.*--include 'notes/\*\*'"):
        GitSource(SourceOptions((f"git+{repo.path}/notes",)))
    with pytest.raises(ConfigError, match="needs a folder to keep the clone in"):
        GitSource(SourceOptions((f"git+file://{repo.path}",)))


def test_a_bare_repository_is_read_in_place(repo: Repo, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(bare)], check=True)
    items = [i for i in GitSource(SourceOptions((f"git+{bare}@main",))).scan()]
    assert [i.id for i in items] == [
        f"git+{bare.resolve()}@main:{p}"
        for p in ("alpha.md", "beta.md", "gamma.md", "notes/delta.txt")
    ]


def test_git_targets_pick_the_git_source() -> None:
    assert GitSource.claims("git+/srv/repo") and not GitSource.claims("/srv/repo")
    assert pick_source(["git+/srv/repo@main", "git+https://host/o/r.git"]) == "git"


def test_rag_ingest_reads_a_git_target(repo: Repo, hashing_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apps.cli", "ingest", f"git+{repo.path}@main", "--json"],
        env=hashing_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["added"], out["failed"]) == (4, [])
