"""`rag ingest` over folders that Hypothesis makes up: names as bytes (not always UTF-8),
contents in every encoding or none, control characters, NULs, files over the size limit,
symlinks that dangle, loop or lead out of the folder, nested folders.

The properties, after a first ingest, after files and links are removed, and after a
narrower ``--include``:

* nothing raises (the CLI exits 0 or 3 and never reports an "unexpected error");
* every regular file with a supported suffix under the folder is ingested, or listed as
  failed or as skipped (nothing to index) with a reason, under an id inside the folder
  that is valid text;
* the collection holds exactly what a clean ingest, into a fresh data directory, of a
  copy of only the files it ingested holds (the same sources and chunk texts);
* a full cleanup under ``--include`` removes nothing that the pattern leaves out.

Bounded to a few dozen files per example and a modest number of examples, so that the
file runs in about a minute on two cores; the store is FAISS (the default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from connectors.filesystem import IGNORED_DIRS, SUPPORTED_SUFFIXES, FileRef, source_id, walk
from rag.collection import open_collection
from rag.config import Settings
from rag.indexing import IngestReport
from tests.fixtures_docs import pdf_bytes, write_docx

MAX_MB = 0.01  # files over 10 KB are refused
#: Examples per property; RAG_FUZZ_EXAMPLES=500 for a longer search.
EXAMPLES = int(os.environ.get("RAG_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: it takes minutes per failure
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------------------
# Folders

NAME_PIECES = [
    b"a", b"b", b"Z", b"7", b"-", b"_", b" ", b"~", b"#", b"%", b"[", b"]", b"*", b"?",
    b"!", b"'", b"\\", b".", "é".encode(), "日本".encode(), "🦦".encode(),
    b"\xe9", b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\x01", b"\x1b", b"\n", b"\t", b"\x7f",
]  # fmt: skip
SUFFIXES = [
    b".txt", b".md", b".rst", b".csv", b".html", b".pdf", b".docx", b".TXT", b".Md",
    b".text", b".htm", b".xyz", b"",
]  # fmt: skip
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "latin-1", "cp1252"]

stems = st.lists(st.sampled_from(NAME_PIECES), min_size=1, max_size=5).map(b"".join)
hidden = st.sampled_from([b"", b"", b"", b"."])
folder_names = st.one_of(
    st.builds(lambda h, s: h + s, hidden, stems), st.sampled_from([b"node_modules", b".git"])
)
file_names = st.builds(lambda h, s, x: h + s + x, hidden, stems, st.sampled_from(SUFFIXES))


@cache
def office_files() -> tuple[bytes, bytes]:
    pdf = pdf_bytes([["A page of a real PDF about tidal pools."], []])
    with tempfile.TemporaryDirectory() as tmp:
        docx = write_docx(Path(tmp) / "d.docx", core_title="Fuzz")
    return pdf, docx


class _Oversized(bytes):
    """Content over ``MAX_MB``, shown briefly in Hypothesis's reports."""

    def __repr__(self) -> str:
        return "OVERSIZED"


OVERSIZED = _Oversized(b"too big " * 1500)


def _encoded(text: str, codec: str) -> bytes:
    return text.encode(codec, errors="replace")


contents = st.one_of(
    st.builds(_encoded, st.text(max_size=300), st.sampled_from(ENCODINGS)),
    st.builds(
        _encoded,
        st.text(st.sampled_from("ab \n\t\x00\x1b\x07\x85\x9b\x7f\r\x0c\x0bçé日"), max_size=200),
        st.sampled_from(ENCODINGS),
    ),
    st.binary(max_size=400),
    st.just(b""),
    st.just(OVERSIZED),
    st.sampled_from(["pdf", "docx"]).map(lambda k: office_files()[k == "docx"]),
)

# A link's target: one of these, or the n-th entry made before it.
LINK_KINDS = ["dangling", "self", "parent", "root", "outside-file", "outside-dir"]
links = st.tuples(file_names, st.one_of(st.sampled_from(LINK_KINDS), st.integers(0, 40)))
files = st.tuples(file_names, contents)
entries = st.lists(
    st.tuples(st.lists(folder_names, max_size=2), st.one_of(files, links)),
    min_size=1,
    max_size=30,
)


@dataclass
class Tree:
    root: Path
    outside: Path
    created: list[bytes]  # absolute paths of what was made, in order


def build(base: Path, spec: list) -> Tree:
    # Alone in their folder: a link to ".." must not lead into the data directories.
    root, outside = base / "tree" / "root", base / "tree" / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "outside.md").write_text("Text kept outside the folder, reached by a link.\n")
    (outside / "sub" / "deep.txt").write_text("A file below a linked folder outside.\n")
    root.mkdir()
    # Words in every collection: bm25s cannot index a collection without a single word.
    (root / "anchor.md").write_text("# Anchor\n\nOtters hold hands while they sleep.\n")
    broot = os.fsencode(root)
    created: list[bytes] = []
    for parents, (name, what) in spec:
        folder = os.path.join(broot, *(_safe(p) for p in parents))
        path = os.path.join(folder, _safe(name))
        try:
            os.makedirs(folder, exist_ok=True)
            if os.path.lexists(path):
                continue
            if isinstance(what, bytes):
                with open(path, "wb") as f:
                    f.write(what)
            else:
                os.symlink(_target(what, path, broot, created, outside), path)
        except OSError:  # a file where a folder should be: not this entry
            continue
        created.append(path)
    return Tree(root, outside, created)


def _safe(name: bytes) -> bytes:
    return b"d" + name if not name.strip(b".") else name


def _target(
    kind: str | int, path: bytes, root: bytes, created: list[bytes], outside: Path
) -> bytes:
    if isinstance(kind, int):
        return created[kind % len(created)] if created else b"nowhere.md"
    return {
        "dangling": b"no-such-file.md",
        "self": path,
        "parent": b"..",
        "root": root,
        "outside-file": os.fsencode(outside / "outside.md"),
        "outside-dir": os.fsencode(outside),
    }[kind]


# ---------------------------------------------------------------------------------------
# Ingests and what they left


@dataclass
class Outcome:
    report: IngestReport
    recorded: set[str]  # source ids, relative to the root
    chunks: set[tuple[str, str, str]]  # (relative source, title, text)


def ingest(data_dir: Path, root: Path, *, include: tuple[str, ...] = ()) -> Outcome:
    s = Settings(
        data_dir=data_dir, embed_model="hashing-64", embed_backend="hashing", max_file_mb=MAX_MB
    )
    real = os.path.realpath(root) + os.sep
    with open_collection(s, create=True) as col:
        report = col.ingest([root], include=include)
        ids = set(col.records.sources())
        chunks = [c for batch, _ in col.store.scan() for c in batch]
    for ident in ids:
        assert ident.startswith(real), f"{ident} is not inside {real}"
        ident.encode("utf-8")  # valid text
    rel = len(real)
    return Outcome(
        report,
        {i[rel:] for i in ids},
        {(str(c.metadata["source"])[rel:], str(c.metadata["title"]), c.text) for c in chunks},
    )


def candidates(root: Path) -> Iterator[tuple[str, str]]:
    """(id, path) of each entry with a supported suffix that a walk must account for: below
    the root, not hidden, not in an ignored folder; links listed, not followed."""
    real = os.path.realpath(root)
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in IGNORED_DIRS]
        for name in names:
            if name.startswith(".") or name in IGNORED_DIRS:
                continue
            if os.path.splitext(name)[1].lower() not in SUPPORTED_SUFFIXES:
                continue
            path = os.path.join(folder, name)
            yield source_id(real + path[len(str(root)) :]), path


def check_accounted(root: Path, outcome: Outcome) -> None:
    real = os.path.realpath(root) + os.sep
    failed = {f.source: f.reason for f in outcome.report.failed}
    skipped = {f.source: f.reason for f in outcome.report.skipped}
    assert all(isinstance(r, str) and r for r in [*failed.values(), *skipped.values()])
    assert not failed.keys() & skipped.keys()
    recorded = {real + r for r in outcome.recorded}
    for ident, path in candidates(root):
        if not os.path.islink(path):  # a file is named by its own path, before any link
            assert ident in recorded or ident in failed or ident in skipped, (
                f"{ident} neither ingested, failed nor skipped"
            )
        elif not os.path.exists(path):  # a link to a file may be a second name: no check
            assert ident in failed, f"the broken link {ident} is not reported"


def clean_copy(tree: Tree, recorded: set[str], dest: Path) -> None:
    """The files behind ``recorded`` copied to ``dest`` under the same relative names."""
    real = os.path.realpath(tree.root) + os.sep
    done: set[str] = set()
    for ref in walk([tree.root]):
        if not isinstance(ref, FileRef):
            continue
        rel_os = str(ref.path)[len(real) :]
        rel = source_id(rel_os)
        if rel in recorded and rel not in done:  # the first of two names that read alike
            done.add(rel)
            target = os.path.join(os.fsencode(dest), os.fsencode(rel_os))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(ref.path, target)


def check_equals_clean(
    base: Path, tree: Tree, outcome: Outcome, round_: str, *, before: set[str] = frozenset()
) -> None:
    """``outcome`` holds what a clean ingest of a copy of the files it ingested holds. Files
    recorded ``before`` that failed now, or lie below a folder or link that failed, are left
    out: a failure keeps the last good version (an unmounted drive, a file being written, a
    link whose target is missing are no deletion)."""
    real = os.path.realpath(tree.root) + os.sep
    failed = _failed(outcome)
    kept = {
        r
        for r in outcome.recorded & before
        if any(real + r == f or (real + r).startswith(f + os.sep) for f in failed)
    }
    dest = base / f"clean-{round_}"
    dest.mkdir()
    clean_copy(tree, outcome.recorded - kept, dest)
    clean = ingest(base / f"data-clean-{round_}", dest)
    assert clean.report.failed == []
    assert outcome.recorded - kept == clean.recorded
    assert {c for c in outcome.chunks if c[0] not in kept} == clean.chunks


def _failed(outcome: Outcome) -> set[str]:
    return {f.source for f in outcome.report.failed}


def remove_some(tree: Tree, picks: list[int]) -> None:
    for n in picks:
        path = tree.created[n % len(tree.created)]
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
    if len(picks) % 3 == 0:  # sometimes the target of the outside links goes too
        shutil.rmtree(tree.outside, ignore_errors=True)


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ragkit-fuzz-") as tmp:
        yield Path(tmp).resolve()


# ---------------------------------------------------------------------------------------
# The properties


@settings(FUZZ, max_examples=EXAMPLES)
@given(spec=entries, picks=st.lists(st.integers(0, 1000), max_size=6))
def test_ingest_accounts_for_every_file_and_equals_a_clean_ingest(
    spec: list, picks: list[int]
) -> None:
    with workspace() as base:
        tree = build(base, spec)
        data = base / "data"

        first = ingest(data, tree.root)
        check_accounted(tree.root, first)
        check_equals_clean(base, tree, first, "1")
        again = ingest(data, tree.root)
        assert (again.report.added, again.report.updated, again.report.deleted) == (0, 0, 0)

        remove_some(tree, picks)
        narrow = ingest(data, tree.root, include=("*.md",))
        assert {r for r in first.recorded if not r.endswith(".md")} <= narrow.recorded

        full = ingest(data, tree.root)
        check_accounted(tree.root, full)
        check_equals_clean(base, tree, full, "2", before=first.recorded | narrow.recorded)


RAG = [sys.executable, "-m", "apps.cli"]
HASHING = ["--embed-backend", "hashing", "--embed-model", "hashing-64"]


@settings(FUZZ, max_examples=max(1, EXAMPLES // 10))
@given(spec=entries)
def test_the_cli_ingests_generated_folders(spec: list) -> None:
    with workspace() as base:
        tree = build(base, spec)
        env = {**os.environ, "RAG_DATA_DIR": str(base / "cli-data")}
        args = [*RAG, "ingest", str(tree.root), *HASHING, "--max-file-mb", str(MAX_MB)]
        proc = subprocess.run([*args, "--json"], env=env, capture_output=True, timeout=300)
        stderr = proc.stderr.decode("utf-8")  # what the CLI prints is valid text
        assert proc.returncode in (0, 3), stderr
        assert "unexpected error" not in stderr
        report = json.loads(proc.stdout.decode("utf-8"))

        library = ingest(base / "lib-data", tree.root)
        assert report["added"] == len(library.recorded)
        assert {f["path"] for f in report["failed"]} == {f.source for f in library.report.failed}
        assert {f["path"] for f in report["skipped"]} == {f.source for f in library.report.skipped}

        env["RAG_DATA_DIR"] = str(base / "cli-text")
        proc = subprocess.run(args, env=env, capture_output=True, timeout=300)
        assert proc.returncode in (0, 3), proc.stderr.decode("utf-8", "replace")
        assert b"unexpected error" not in proc.stderr
        proc.stdout.decode("utf-8")
