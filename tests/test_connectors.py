"""The filesystem connector: walk() finds files, load() turns each into documents.

Every fixture is generated in tmp_path at test time (PDFs with reportlab, DOCX with
python-docx); nothing binary is committed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import struct
import unicodedata
import zipfile
from pathlib import Path

import pytest

import connectors.filesystem as fs
from connectors import IGNORED_DIRS, SUPPORTED_SUFFIXES, FileRef, FilesystemSource, load, walk
from connectors.filesystem import _glob_regex, human_size
from connectors.formats import PARSERS
from connectors.parsers import normalize_text
from rag.chunking import Chunker, ChunkerSettings
from rag.contract import check_chunks, check_metadata, check_text
from rag.embeddings.hashing import HashingEmbedder
from rag.errors import ConfigError, IngestError
from rag.source import SourceItem, SourceOptions
from rag.types import Document, Failure, Skipped
from tests.fixtures_docs import encrypted_pdf_bytes, pdf_bytes, write_docx, write_pdf


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def ref(path: Path) -> FileRef:
    st = path.stat()
    return FileRef(path.resolve(), st.st_size, st.st_mtime)


def load_one(path: Path) -> Document:
    docs = load(ref(path))
    assert len(docs) == 1
    return docs[0]


def load_error(path: Path) -> str:
    with pytest.raises(IngestError) as info:
        load(ref(path))
    return str(info.value)


def rel_paths(items: list[FileRef | Failure], root: Path) -> list[str]:
    real = root.resolve()
    return [item.path.relative_to(real).as_posix() for item in items if isinstance(item, FileRef)]


def failures(items: list[FileRef | Failure]) -> list[Failure]:
    return [item for item in items if isinstance(item, Failure)]


def expected_metadata(path: Path, **extra: object) -> dict[str, object]:
    data = path.read_bytes()
    real = path.resolve()
    return {
        "source": str(real),
        "file_type": real.suffix[1:].lower(),
        "mtime": real.stat().st_mtime,
        "content_hash": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


# ---------------------------------------------------------------------------------------
# walk


def test_constants_cover_the_documented_formats() -> None:
    assert {
        ".txt",
        ".text",
        ".md",
        ".markdown",
        ".rst",
        ".html",
        ".htm",
        ".pdf",
        ".docx",
        ".csv",
        ".pptx",
        ".xlsx",
        ".epub",
        ".ipynb",
        ".json",
        ".jsonl",
        ".eml",
    } == SUPPORTED_SUFFIXES
    assert {".git", ".venv", "venv", "node_modules", "__pycache__", ".rag", ".tox"} <= IGNORED_DIRS


def test_walk_recurses_sorted_and_skips_hidden_ignored_and_unsupported(tmp_path: Path) -> None:
    for name in [
        "b.md", "a.txt", "A_upper.TXT", "notes.xyz", "Makefile", "docs/z.rst", "docs/a.html",
        "docs/deep/x.csv", "a/inner.md", ".hidden.md", ".hiddendir/x.md", ".git/HEAD.md",
        "node_modules/pkg/README.md", "__pycache__/m.txt", "venv/lib/site.txt", ".rag/state.txt",
    ]:  # fmt: skip
        write(tmp_path / name, "x")
    items = list(walk([tmp_path]))
    assert failures(items) == []
    assert rel_paths(items, tmp_path) == [
        "A_upper.TXT", "a/inner.md", "a.txt", "b.md", "docs/a.html", "docs/deep/x.csv", "docs/z.rst",
    ]  # fmt: skip
    # Deterministic: a second walk gives the same sequence.
    assert list(walk([tmp_path])) == items


def test_walk_fileref_carries_resolved_path_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "sub" / "note.md", "hello world")
    monkeypatch.chdir(tmp_path)
    (item,) = walk(["sub/../sub"])
    assert isinstance(item, FileRef)
    st = path.stat()
    assert item == FileRef(path.resolve(), st.st_size, st.st_mtime)
    assert item.path.is_absolute()


def test_walk_explicit_files_hidden_unsupported_and_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = write(tmp_path / ".secret.md", "x")
    inside_git = write(tmp_path / ".git" / "notes.txt", "x")
    odd = write(tmp_path / "data.xyz", "x")
    bare = write(tmp_path / "README", "x")
    monkeypatch.chdir(tmp_path)
    items = list(walk([hidden, inside_git, odd, bare, "missing.md", tmp_path / "nope"]))
    refs = [i.path for i in items if isinstance(i, FileRef)]
    assert refs == [hidden.resolve(), inside_git.resolve()]
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    # An unsupported type is skipped (listed, not an error); a missing path fails.
    assert [i for i in items if isinstance(i, Skipped)] == [
        Skipped(str(odd), f"unsupported file type '.xyz'; supported: {supported}"),
        Skipped(str(bare), f"unsupported file type (no suffix); supported: {supported}"),
    ]
    assert failures(items) == [
        Failure(str(tmp_path / "missing.md"), "no such file or directory"),
        Failure(str(tmp_path / "nope"), "no such file or directory"),
    ]


def test_walk_rejects_a_bare_string(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        list(walk(str(tmp_path)))  # type: ignore[arg-type]


def test_walk_never_yields_the_same_file_twice(tmp_path: Path) -> None:
    write(tmp_path / "docs" / "a.md", "x")
    (tmp_path / "docs" / "alias.md").symlink_to(tmp_path / "docs" / "a.md")
    (tmp_path / "mirror").symlink_to(tmp_path / "docs", target_is_directory=True)
    items = list(walk([tmp_path, tmp_path / "docs", tmp_path / "docs" / "a.md"]))
    assert failures(items) == []
    assert [i.path for i in items] == [(tmp_path / "docs" / "a.md").resolve()]


GLOB_TREE = [
    "README.md", "guide.txt", "data.csv", "docs/intro.md", "docs/api/ref.md", "docs/table.csv",
    "drafts/todo.md", "drafts/old/plan.txt", "src/drafts/keep.md",
]  # fmt: skip


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ((), (), sorted(GLOB_TREE, key=lambda p: p.split("/"))),
        (("**/*.md",), (), ["README.md", "docs/api/ref.md", "docs/intro.md", "drafts/todo.md", "src/drafts/keep.md"]),
        (("*.csv",), (), ["data.csv", "docs/table.csv"]),
        (("docs/**/*.md",), (), ["docs/api/ref.md", "docs/intro.md"]),
        (("docs/*.md",), (), ["docs/api/ref.md", "docs/intro.md"]),  # fnmatch: * crosses /
        (("**/*.md",), ("drafts/**",), ["README.md", "docs/api/ref.md", "docs/intro.md", "src/drafts/keep.md"]),
        ((), ("drafts",), ["README.md", "data.csv", "docs/api/ref.md", "docs/intro.md", "docs/table.csv", "guide.txt", "src/drafts/keep.md"]),
        ((), ("**/drafts/**", "*.csv"), ["README.md", "docs/api/ref.md", "docs/intro.md", "guide.txt"]),
        (("*.md",), ("*.md",), []),  # exclude wins over include
        (("guide.t?t", "data.[ct]sv"), (), ["data.csv", "guide.txt"]),
        (("[!d]*.md",), (), ["README.md", "src/drafts/keep.md"]),
    ],
)  # fmt: skip
def test_walk_include_exclude_globs(
    tmp_path: Path, include: tuple[str, ...], exclude: tuple[str, ...], expected: list[str]
) -> None:
    for name in GLOB_TREE:
        write(tmp_path / name, "x")
    items = list(walk([tmp_path], include=include, exclude=exclude))
    assert rel_paths(items, tmp_path) == expected


def test_exclude_prunes_folders_before_reading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "keep.md", "x")
    write(tmp_path / "cache" / "big.md", "x")
    listed: list[str] = []
    real_scandir = os.scandir

    def spy(path: str) -> object:
        listed.append(os.path.basename(path))
        return real_scandir(path)

    monkeypatch.setattr(fs.os, "scandir", spy)
    items = list(walk([tmp_path], exclude=["cache/"]))
    assert rel_paths(items, tmp_path) == ["keep.md"]
    assert "cache" not in listed


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**/*.md", "a.md", True),
        ("**/*.md", "x/y/a.md", True),
        ("docs/**/a.md", "docs/a.md", True),
        ("docs/**/a.md", "docsa.md", False),
        ("drafts/**", "drafts/x/y.txt", True),
        ("drafts/**", "other/drafts/y.txt", False),
        ("./notes/*.txt", "notes/a.txt", True),
        ("a+b(1).md", "a+b(1).md", True),
        ("a+b(1).md", "aab1.md", False),
        ("*.MD", "a.md", False),
    ],
)
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert bool(_glob_regex(pattern).match(path)) is matches


def test_walk_detects_symlink_loops_and_terminates(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "a.md", "x")
    write(root / "sub" / "b.md", "x")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root, target_is_directory=True)
    items = list(walk([root]))
    assert rel_paths(items, root) == ["a.md", "sub/b.md"]
    assert [f.source for f in failures(items)] == [str(root / "self"), str(root / "sub" / "up")]
    assert all(f.reason.startswith("symlink loop") for f in failures(items))
    assert failures(list(walk([root], exclude=["self", "sub/up"]))) == []


def test_walk_reports_file_symlink_cycles_and_broken_links(tmp_path: Path) -> None:
    write(tmp_path / "ok.md", "x")
    (tmp_path / "cycle.md").symlink_to(tmp_path / "cycle.md")
    (tmp_path / "dangling.md").symlink_to(tmp_path / "gone.md")
    (tmp_path / "dangling_dir").symlink_to(tmp_path / "gone")
    (tmp_path / "dangling.xyz").symlink_to(tmp_path / "gone.xyz")  # not a candidate: silent
    items = list(walk([tmp_path]))
    assert rel_paths(items, tmp_path) == ["ok.md"]
    reasons = {Path(f.source).name: f.reason for f in failures(items)}
    assert set(reasons) == {"cycle.md", "dangling.md", "dangling_dir"}
    assert reasons["cycle.md"].startswith("symlink loop")
    assert (
        reasons["dangling.md"]
        == f"broken symlink: its target {tmp_path / 'gone.md'} does not exist"
    )
    assert reasons["dangling_dir"].startswith("broken symlink")
    # Excluded links are not reported.
    assert rel_paths(list(walk([tmp_path], exclude=["cycle*", "dangling*"])), tmp_path) == ["ok.md"]
    assert failures(list(walk([tmp_path], exclude=["cycle*", "dangling*"]))) == []
    # Named explicitly, a dangling link is reported too.
    assert list(walk([tmp_path / "dangling.md"])) == [
        Failure(str(tmp_path / "dangling.md"), reasons["dangling.md"])
    ]


def test_walk_follows_symlinked_folders_and_files(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    write(target / "linked.md", "x")
    root = tmp_path / "root"
    write(root / "real.txt", "x")
    (root / "shortcut").symlink_to(target, target_is_directory=True)
    (root / "file_link.md").symlink_to(target / "linked.md")
    items = list(walk([root]))
    assert failures(items) == []
    # The file appears once, named inside the root (not by the path the link resolves to),
    # by the first link that reaches it: entries that are links come after the others.
    real = root.resolve()
    assert [i.path for i in items] == [real / "real.txt", real / "file_link.md"]


def test_walk_names_a_file_by_its_real_path_before_any_link_to_it(tmp_path: Path) -> None:
    write(tmp_path / "z_dir" / "x.md", "x")
    write(tmp_path / "b.md", "x")
    (tmp_path / "a_link").symlink_to(tmp_path / "z_dir", target_is_directory=True)
    (tmp_path / "a.md").symlink_to(tmp_path / "b.md")
    items = list(walk([tmp_path]))
    assert failures(items) == []
    assert rel_paths(items, tmp_path) == ["b.md", "z_dir/x.md"]


def test_walk_reports_oversized_files(tmp_path: Path) -> None:
    write(tmp_path / "small.txt", "x" * 100)
    big = write(tmp_path / "big.txt", "x" * 3000)
    items = list(walk([tmp_path], max_bytes=2048))
    assert rel_paths(items, tmp_path) == ["small.txt"]
    assert failures(items) == [Failure(str(big), "larger than the 2.0 KB limit (2.9 KB)")]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KB"),
        (50 * 2**20, "50.0 MB"),
        (3 * 2**30, "3.0 GB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_walk_reports_unreadable_folders_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.md", "x")
    write(tmp_path / "locked" / "secret.md", "x")
    write(tmp_path / "z.md", "x")
    locked = str(tmp_path / "locked")
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if path == locked:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(fs.os, "scandir", scandir)
    items = list(walk([tmp_path]))
    assert rel_paths(items, tmp_path) == ["a.md", "z.md"]
    assert failures(items) == [Failure(locked, "permission denied")]


# ---------------------------------------------------------------------------------------
# load: text formats


def test_normalize_text() -> None:
    raw = "a  \r\nb\t\r\n\r\n\r\n\r\n\r\nc\x00d\re \n\n"
    assert normalize_text(raw) == "a\nb\n\n\ncd\ne"


def test_load_utf8_text_with_bom_and_exact_metadata(tmp_path: Path) -> None:
    path = write(
        tmp_path / "notes.txt",
        b"\xef\xbb\xbfFirst line   \r\nSecond \xe2\x80\x94 line\r\n\r\n\r\n\r\n\r\nEnd\r\n",
    )
    doc = load_one(path)
    assert doc.text == "First line\nSecond — line\n\n\nEnd"
    assert doc.format == "text"
    assert doc.source == str(path.resolve())
    assert doc.metadata == expected_metadata(path, title="notes")
    assert "encoding" not in doc.metadata


@pytest.mark.parametrize("codec", ["latin-1", "cp1252"])
def test_load_legacy_western_encoding(tmp_path: Path, codec: str) -> None:
    text = "Le café est très chaud. Déjà vu, naïve façade, crème brûlée.\n"
    path = write(tmp_path / "french.txt", text.encode(codec))
    doc = load_one(path)
    assert "crème brûlée" in doc.text
    assert "très" in doc.text
    assert doc.metadata["encoding"] == "cp1252"
    assert doc.metadata["content_hash"] == hashlib.sha256(text.encode(codec)).hexdigest()


def test_load_detects_non_western_encodings_too(tmp_path: Path) -> None:
    text = "Привет, как дела? Это тест кодировки.\n"
    path = write(tmp_path / "ru.txt", text.encode("cp1251"))
    doc = load_one(path)
    assert doc.text == text.strip()
    assert doc.metadata["encoding"] == "cp1251"


def test_load_utf16_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "wide.txt", "Grüße aus München\n".encode("utf-16"))
    doc = load_one(path)
    assert doc.text == "Grüße aus München"
    assert str(doc.metadata["encoding"]).startswith("utf-16")


@pytest.mark.parametrize(
    "content",
    [
        bytes(random.Random(7).randrange(256) for _ in range(4096)) + b"\x00",
        b"\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11" * 50 + b"abc",
        b"hello\x00world",
    ],
    ids=["random-bytes", "control-chars", "nul-byte"],
)
def test_load_rejects_binary_content(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "junk.txt", content)
    assert load_error(path) == "binary content, not text"


def test_load_empty_and_blank_files(tmp_path: Path) -> None:
    assert load_error(write(tmp_path / "empty.txt", b"")) == "empty file"
    assert load_error(write(tmp_path / "empty.pdf", b"")) == "empty file"
    assert load_error(write(tmp_path / "blank.md", " \n\t\r\n  \n")) == "no text"


def test_load_markdown_title_and_format(tmp_path: Path) -> None:
    text = "---\ntitle: front\n# not a heading\n---\n\n```bash\n# a comment\n```\n\n## Sub first\n\n# Real Title #\n\nBody.\n"
    path = write(tmp_path / "guide.markdown", text)
    doc = load_one(path)
    assert doc.format == "markdown"
    assert doc.text == text.strip("\n")
    assert doc.metadata == expected_metadata(path, title="Real Title")
    untitled = write(tmp_path / "plain-notes.md", "## Only a subheading\n\ntext\n")
    assert load_one(untitled).metadata["title"] == "plain-notes"


def test_load_rst_titles_become_markdown_headings(tmp_path: Path) -> None:
    rst = (
        "=============\n Guide Title\n=============\n\nIntro text.\n\n"
        "Install\n=======\n\nRun it.\n\nFrom source\n-----------\n\n"
        "Build it::\n\n    make\n    ----\n\nUsage\n=====\n\nA para\nthat wraps.\n\n----------\n\nAfter the rule.\n"
    )
    path = write(tmp_path / "guide.rst", rst)
    doc = load_one(path)
    assert doc.format == "markdown"
    assert doc.text == (
        "# Guide Title\n\nIntro text.\n\n## Install\n\nRun it.\n\n### From source\n\n"
        "Build it::\n\n    make\n    ----\n\n## Usage\n\nA para\nthat wraps.\n\n----------\n\nAfter the rule."
    )
    assert doc.metadata == expected_metadata(path, title="Guide Title")


def test_load_rst_without_sections_is_titled_by_stem(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "loose.rst", "Just a paragraph.\n"))
    assert doc.metadata["title"] == "loose"
    assert doc.text == "Just a paragraph."


HTML_PAGE = """<!DOCTYPE html>
<html><head><title>  Release   Notes </title>
<style>.x { color: red }</style><script>var secret = "SCRIPT-TEXT";</script></head>
<body>
<nav><a href="/">NAV-LINK</a></nav>
<noscript>NOSCRIPT-TEXT</noscript>
<svg><text>SVG-TEXT</text></svg><template><p>TEMPLATE-TEXT</p></template>
<h1>Version <em>2.0</em></h1>
<p>We   fixed <b>many</b>
bugs &amp; added&nbsp;features.</p>
<!-- COMMENT-TEXT -->
<h2>Changes</h2>
<ul><li>Faster <code>search</code></li><li>New store<ul><li>qdrant</li></ul></li></ul>
<table><tr><th>Store</th><th>Speed</th></tr><tr><td>faiss</td><td>fast</td></tr></table>
<div>Line one<br>Line two</div>
<h3>Thanks</h3><p>Everyone.</p>
</body></html>
"""


def test_load_html_to_markdown_text(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.html", HTML_PAGE)
    doc = load_one(path)
    assert doc.format == "markdown"
    assert doc.text == (
        "# Version 2.0\n\nWe fixed many bugs & added features.\n\n## Changes\n\n"
        "- Faster search\n- New store\n  - qdrant\n\nStore | Speed\nfaiss | fast\n\n"
        "Line one\nLine two\n\n### Thanks\n\nEveryone."
    )
    for hidden in ("SCRIPT", "NAV-LINK", "NOSCRIPT", "SVG-TEXT", "TEMPLATE", "COMMENT", "color"):
        assert hidden not in doc.text
    assert doc.metadata == expected_metadata(path, title="Release Notes")


def test_load_html_title_falls_back_to_h1_then_stem(tmp_path: Path) -> None:
    h1 = write(tmp_path / "a.htm", "<html><body><h1>The <i>Heading</i></h1><p>x</p></body></html>")
    assert load_one(h1).metadata["title"] == "The Heading"
    bare = write(tmp_path / "bare-page.html", "<p>only text</p>")
    assert load_one(bare).metadata["title"] == "bare-page"
    assert load_one(bare).text == "only text"


def test_load_html_declared_legacy_charset(tmp_path: Path) -> None:
    html = '<html><head><meta charset="windows-1252"><title>Caf\xe9</title></head><body><p>cr\xe8me br\xfbl\xe9e</p></body></html>'
    doc = load_one(write(tmp_path / "menu.html", html.encode("cp1252")))
    assert doc.text == "crème brûlée"
    assert doc.metadata["title"] == "Café"
    assert doc.metadata["encoding"] == "windows-1252"


def test_load_html_script_only_has_no_text(tmp_path: Path) -> None:
    path = write(
        tmp_path / "app.html",
        "<html><head><script>x()</script></head><body><nav>menu</nav></body></html>",
    )
    assert load_error(path) == "no text"


def test_load_csv_rows_as_header_value_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "people.csv",
        'name,city,note\r\nAnn,Paris,"likes, commas"\r\nBob,,\r\n,,\r\nCy,Rome,"two\nlines"\r\n',
    )
    doc = load_one(path)
    assert doc.format == "text"
    assert (
        doc.text
        == "name: Ann; city: Paris; note: likes, commas\nname: Bob\nname: Cy; city: Rome; note: two lines"
    )
    assert doc.metadata == expected_metadata(path, title="people")


def test_load_csv_sniffs_semicolons_and_legacy_encoding(tmp_path: Path) -> None:
    content = "produit;prix;pays\ncrème brûlée;4,50;France\nthé;2,00;Chine\n".encode("cp1252")
    doc = load_one(write(tmp_path / "menu.csv", content))
    assert (
        doc.text
        == "produit: crème brûlée; prix: 4,50; pays: France\nproduit: thé; prix: 2,00; pays: Chine"
    )
    assert doc.metadata["encoding"] == "cp1252"


def test_load_csv_without_rows(tmp_path: Path) -> None:
    assert load_error(write(tmp_path / "header.csv", "a,b,c\n")) == "no rows"
    assert load_error(write(tmp_path / "blankrows.csv", "a,b\n,\n")) == "no rows"


# ---------------------------------------------------------------------------------------
# load: PDF


def test_load_pdf_one_document_per_page(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    write_pdf(
        path, [["Alpha page one", "second line"], ["Beta page two"]], title="Quarterly Report"
    )
    docs = load(ref(path))
    assert [d.text for d in docs] == ["Alpha page one\nsecond line", "Beta page two"]
    assert [d.format for d in docs] == ["text", "text"]
    for number, doc in enumerate(docs, 1):
        assert doc.source == str(path.resolve())
        assert doc.metadata == expected_metadata(
            path, title="Quarterly Report", page=number, page_count=2
        )


def test_load_pdf_skips_blank_pages_and_uses_stem_for_placeholder_title(tmp_path: Path) -> None:
    path = tmp_path / "scan-2024.pdf"
    write_pdf(path, [["first"], [], ["third"]])  # reportlab's default title is "untitled"
    docs = load(ref(path))
    assert [(d.metadata["page"], d.text) for d in docs] == [(1, "first"), (3, "third")]
    assert {d.metadata["page_count"] for d in docs} == {3}
    assert {d.metadata["title"] for d in docs} == {"scan-2024"}


def test_load_pdf_without_text(tmp_path: Path) -> None:
    path = tmp_path / "scanned.pdf"
    write_pdf(path, [[]])
    assert load_error(path) == "no extractable text (scanned PDF? OCR is not supported)"


def test_load_encrypted_pdf(tmp_path: Path) -> None:
    plain = pdf_bytes([["Top secret"]], title="Secret")
    locked = write(
        tmp_path / "locked.pdf",
        encrypted_pdf_bytes(plain, user_password="pw", owner_password="owner"),
    )
    assert load_error(locked) == "encrypted PDF; a password is required"
    # Encrypted with an empty user password (owner restrictions only): readable.
    open_one = write(
        tmp_path / "restricted.pdf",
        encrypted_pdf_bytes(plain, user_password="", owner_password="owner"),
    )
    (doc,) = load(ref(open_one))
    assert doc.text == "Top secret"
    assert doc.metadata["title"] == "Secret"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_load_malformed_pdfs_are_reported_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = pdf_bytes([["one"], ["two"]])
    truncated = write(tmp_path / "truncated.pdf", data[: len(data) // 2])
    garbage = write(tmp_path / "garbage.pdf", b"this is not a PDF at all\n" * 20)
    # What an application's root handler sees (pytest's caplog also hooks non-propagating
    # loggers, so it cannot tell).
    collect = _Collect()
    root = logging.getLogger()
    caplog.set_level(logging.DEBUG, logger="connectors.pdf")
    root.addHandler(collect)
    try:
        assert load_error(truncated).startswith("malformed PDF: ")
        assert load_error(garbage).startswith("malformed PDF: ")
    finally:
        root.removeHandler(collect)
    # pypdf's robustness warnings ("EOF marker not found") are routed to DEBUG.
    assert [r for r in collect.records if r.levelno >= logging.WARNING] == []
    messages = [
        r.getMessage()
        for r in collect.records
        if r.name == "connectors.pdf" and r.levelno == logging.DEBUG
    ]
    assert any("EOF marker not found" in m for m in messages)


# ---------------------------------------------------------------------------------------
# load: DOCX


def test_load_docx_headings_lists_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "plan.docx"
    write_docx(path, core_title="Plan 2025")
    doc = load_one(path)
    assert doc.format == "markdown"
    assert doc.text == (
        "# Project Plan\n\n# Goals\n\nShip the connector before Friday.\n\n- Parse PDFs\n- Parse DOCX\n\n"
        "## Budget\n\nItem | Cost\nLaptop | 1200\nTotal: 1200\n\nClosing remark."
    )
    assert doc.metadata == expected_metadata(path, title="Plan 2025")


def test_load_docx_title_falls_back_to_heading_then_stem(tmp_path: Path) -> None:
    titled = tmp_path / "a.docx"
    write_docx(titled)
    assert load_one(titled).metadata["title"] == "Project Plan"
    plain = tmp_path / "minutes.docx"
    write_docx(plain, with_heading=False)
    doc = load_one(plain)
    assert doc.metadata["title"] == "minutes"
    assert "#" not in doc.text


def test_load_corrupt_docx(tmp_path: Path) -> None:
    assert (
        load_error(write(tmp_path / "bad.docx", b"PK\x03\x04 but not really a zip"))
        == "malformed DOCX: not a ZIP archive"
    )
    other_zip = tmp_path / "other.docx"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "not a word document")
    assert load_error(other_zip).startswith("malformed DOCX: ")


# ---------------------------------------------------------------------------------------
# load: files that move, change or resist


def test_load_file_that_disappeared(tmp_path: Path) -> None:
    path = write(tmp_path / "gone.md", "# x")
    file_ref = ref(path)
    path.unlink()
    with pytest.raises(IngestError, match=r"^disappeared before it could be read$"):
        load(file_ref)


def test_load_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "private.txt", "x")

    def denied(p: Path) -> bytes:
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(fs, "_read_bytes", denied)
    assert load_error(path) == "permission denied"


def test_load_file_changing_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "log.txt", "line 1\n")
    calls: list[int] = []
    real_read = fs._read_bytes

    def read_then_append(p: Path) -> bytes:
        data = real_read(p)
        calls.append(len(data))
        with open(p, "a") as f:  # a writer appends right after our read
            f.write("more\n")
        return data

    monkeypatch.setattr(fs, "_read_bytes", read_then_append)
    assert load_error(path) == "changed while being read; run the ingest again"
    assert len(calls) == 2  # read once more, then gave up


def test_load_rereads_a_file_that_changed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "log.txt", "line 1\n")
    real_read = fs._read_bytes
    calls: list[int] = []

    def append_once(p: Path) -> bytes:
        data = real_read(p)
        calls.append(1)
        if len(calls) == 1:
            with open(p, "a") as f:
                f.write("line 2\n")
        return data

    monkeypatch.setattr(fs, "_read_bytes", append_once)
    doc = load_one(path)
    assert doc.text == "line 1\nline 2"
    assert doc.metadata["content_hash"] == hashlib.sha256(b"line 1\nline 2\n").hexdigest()
    assert doc.metadata["size"] == len(b"line 1\nline 2\n")


def test_unexpected_parser_errors_are_wrapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(data: bytes, stem: str) -> list[object]:
        raise RuntimeError("kaboom at byte 3\nsecond line of detail")

    monkeypatch.setitem(PARSERS, ".csv", ("CSV", boom))
    path = write(tmp_path / "t.csv", "a,b\n1,2\n")
    with pytest.raises(IngestError) as info:
        load(ref(path))
    assert str(info.value) == "could not parse CSV: kaboom at byte 3"
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("suffix", sorted(SUPPORTED_SUFFIXES))
def test_load_only_ever_raises_ingest_error(tmp_path: Path, suffix: str) -> None:
    rng = random.Random(suffix)
    samples = [
        bytes(rng.randrange(256) for _ in range(2048)),
        b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n",
        b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(512)),
        b"<html><body><table><tr><td>cell" * 20,
    ]
    for n, sample in enumerate(samples):
        path = write(tmp_path / f"fuzz{n}{suffix}", sample)
        try:
            docs = load(ref(path))
        except IngestError as e:
            assert str(e)
        else:
            assert all(isinstance(d, Document) and d.text.strip() for d in docs)


def test_walk_and_load_end_to_end(tmp_path: Path) -> None:
    write(tmp_path / "a.md", "# Alpha\n\ntext")
    write_pdf(tmp_path / "b.pdf", [["page one"], ["page two"]])
    write(tmp_path / "c.txt", b"")
    docs: list[Document] = []
    errors: list[str] = []
    for item in walk([tmp_path]):
        assert isinstance(item, FileRef)
        try:
            docs.extend(load(item))
        except IngestError as e:
            errors.append(f"{item.path.name}: {e}")
    assert [(Path(d.source).name, d.metadata["title"], d.metadata.get("page")) for d in docs] == [
        ("a.md", "Alpha", None),
        ("b.pdf", "b", 1),
        ("b.pdf", "b", 2),
    ]
    assert errors == ["c.txt: empty file"]


# ---------------------------------------------------------------------------------------
# Names that are not UTF-8


def named(folder: Path, name: bytes) -> Path:
    """``folder / name`` for a name given as bytes (which may not be UTF-8)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))


def source_over(*targets: Path, **options: tuple[str, ...]) -> FilesystemSource:
    return FilesystemSource(SourceOptions(targets=tuple(str(t) for t in targets), **options))


def test_undecodable_names_get_valid_visible_ids_and_are_read(tmp_path: Path) -> None:
    write(tmp_path / "good.txt", "A file with a plain name.")
    write(named(tmp_path, b"caf\xe9.txt"), "Text in a file named in Latin-1.")
    write(named(tmp_path, b"d\xff\xfe") / "inner.md", "# Inner\n\nText in an odd folder.")
    source = source_over(tmp_path)
    items = list(source.scan())
    root = str(tmp_path.resolve())
    assert [i.id for i in items if isinstance(i, SourceItem)] == [
        f"{root}/caf\\xe9.txt",
        f"{root}/d\\xff\\xfe/inner.md",
        f"{root}/good.txt",
    ]
    titles = []
    for item in items:
        assert isinstance(item, SourceItem)
        check_text(item.id, what="an id")  # the store contract takes it
        assert source.covers(item.id)
        assert source.locate(item.id) == item
        (doc,) = source.load(item)
        assert doc.source == doc.metadata["source"] == item.id
        assert check_metadata(doc.metadata) == doc.metadata
        titles.append(doc.metadata["title"])
    assert titles == ["caf\\xe9", "Inner", "good"]


def test_chunks_of_a_file_named_in_latin1_pass_the_store_contract(tmp_path: Path) -> None:
    # Chunk ids hash the source: one holding an undecodable byte (a lone surrogate) could
    # not even be encoded, and no store would keep it.
    write(named(tmp_path, b"caf\xe9.md"), "# Café\n\nA short note about coffee.\n")
    source = source_over(tmp_path)
    (item,) = source.scan()
    assert isinstance(item, SourceItem)
    emb = HashingEmbedder(64)
    chunker = Chunker(
        ChunkerSettings(),
        count_tokens=emb.count_tokens,
        max_tokens=emb.max_tokens,
        tokenizer_id=emb.id,
    )
    chunks = chunker.chunk(source.load(item))
    assert chunks and check_chunks(chunks) == chunks
    assert {c.metadata["source"] for c in chunks} == {f"{tmp_path.resolve()}/caf\\xe9.md"}


def test_undecodable_names_in_failures_are_valid_text(tmp_path: Path) -> None:
    write(named(tmp_path, b"big\xe9.txt"), "x" * 3000)
    named(tmp_path, b"gone\xe9.md").symlink_to(tmp_path / "nowhere.md")
    reasons = {f.source: f.reason for f in failures(list(walk([tmp_path], max_bytes=2048)))}
    root = str(tmp_path.resolve())
    assert set(reasons) == {f"{root}/big\\xe9.txt", f"{root}/gone\\xe9.md"}
    assert reasons[f"{root}/gone\\xe9.md"].startswith("broken symlink")


def test_a_name_that_reads_like_an_escaped_one_is_reported_not_merged(tmp_path: Path) -> None:
    write(named(tmp_path, b"caf\xe9.txt"), "The file with the Latin-1 name.")
    write(tmp_path / "caf\\xe9.txt", "The file whose name holds a backslash.")
    items = list(source_over(tmp_path).scan())
    ids = [i.id for i in items if isinstance(i, SourceItem)]
    (failure,) = [i for i in items if isinstance(i, Failure)]
    assert ids == [failure.source] == [f"{tmp_path.resolve()}/caf\\xe9.txt"]
    assert "same name" in failure.reason


# ---------------------------------------------------------------------------------------
# What a full cleanup may remove: FilesystemSource.covers


def test_covers_is_what_the_walk_would_select(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    source = source_over(tmp_path, include=("*.md", "notes/*"), exclude=("drafts",))
    covered = ["a.md", "sub/b.md", "notes/c.txt", "sub/drafts/d.md"]
    not_covered = ["a.txt", "drafts/c.md", ".hidden/e.md", "node_modules/f.md"]
    assert [source.covers(f"{root}/{p}") for p in covered] == [True] * len(covered)
    assert [source.covers(f"{root}/{p}") for p in not_covered] == [False] * len(not_covered)
    assert not source.covers(f"{root}other/a.md")  # a sibling that shares the prefix
    assert not source.covers("/elsewhere/a.md")
    # Whatever the walk yields is covered.
    for name in [*covered, *not_covered]:
        write(root / name, "x")
    walked = [
        str(i.path) for i in walk([tmp_path], include=("*.md", "notes/*"), exclude=("drafts",))
    ]
    assert walked and all(source.covers(i) for i in walked)
    assert sorted(walked) == sorted(f"{root}/{p}" for p in covered)


def test_covers_a_file_target_by_its_own_id(tmp_path: Path) -> None:
    path = write(tmp_path / "one.md", "x")
    source = source_over(path)
    (item,) = source.scan()
    assert isinstance(item, SourceItem) and source.covers(item.id)
    assert not source.covers(str(tmp_path.resolve() / "two.md"))
    assert not source_over(path, exclude=("*.md",)).covers(item.id)


def test_content_reached_through_a_link_is_covered_by_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "real.md", "x")
    write(tmp_path / "outside" / "linked.md", "x")
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    source = source_over(root)
    ids = [i.id for i in source.scan() if isinstance(i, SourceItem)]
    assert ids == [str(root.resolve() / "real.md"), str(root.resolve() / "link" / "linked.md")]
    assert all(source.covers(i) for i in ids)
    assert not source.covers(str((tmp_path / "outside" / "linked.md").resolve()))


# ---------------------------------------------------------------------------------------
# Glob patterns a user got wrong


@pytest.mark.parametrize("option", ["include", "exclude"])
def test_a_bad_glob_is_a_config_error_naming_it(tmp_path: Path, option: str) -> None:
    with pytest.raises(ConfigError, match=r"\[z-a\]\*"):
        source_over(tmp_path, **{option: ("ok/*.md", "[z-a]*")})
    with pytest.raises(ConfigError, match=r"\[z-a\]\*"):
        list(walk([tmp_path], **{option: ["[z-a]*"]}))


# ---------------------------------------------------------------------------------------
# Text that is hard to recognise, or unfit to show


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_load_utf16_without_bom(tmp_path: Path, codec: str) -> None:
    text = "Grüße aus München.\nA second line, with digits 1234.\n"
    doc = load_one(write(tmp_path / "wide.txt", text.encode(codec)))
    assert doc.text == text.strip()
    assert doc.metadata["encoding"] == codec


def test_load_still_rejects_arrays_of_small_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "numbers.txt", struct.pack("<400H", *range(1, 401)))
    assert load_error(path) == "binary content, not text"


def unshowable(text: str) -> set[str]:
    """Control characters other than the whitespace ones (tab, newline, CR, form feed)."""
    return {c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r\f"}


def test_normalize_text_drops_control_characters() -> None:
    assert normalize_text("a\x1b[1mb\x07c\x85d\x7fe\x9bf\tg\fh\vi") == "a[1mbcdef\tg\fh\ni"


CONTROLLED = (
    "Red \x1b[31malert\x1b[0m rang the bell\x07 twice in the engine room today; "
    "the C1 characters \x85 and \x9b and the delete \x7f must not survive either, end."
)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("log.txt", CONTROLLED),
        ("note.md", f"# Ti\x1btle\n\n{CONTROLLED}"),
        ("page.rst", f"Ti\x1btle\n=====\n\n{CONTROLLED}"),
        ("table.csv", f"name,note\nbell\x07,{CONTROLLED}\n"),
        ("page.html", f"<title>Ti&#27;tle</title><p>{CONTROLLED} &#27;[1m &#x9b;</p>"),
    ],
)
def test_control_characters_never_reach_text_or_title(
    tmp_path: Path, name: str, content: str
) -> None:
    doc = load_one(write(tmp_path / name, content))
    assert "alert" in doc.text and "end." in doc.text
    assert unshowable(doc.text) == set()
    assert unshowable(str(doc.metadata["title"])) == set()


def test_control_characters_never_reach_docx_text(tmp_path: Path) -> None:
    body = "<w:p><w:r><w:t>C1 \u0085 and \u009b here, end.</w:t></w:r></w:p>".encode()
    doc = load_one(write(tmp_path / "c1.docx", docx_with_body(tmp_path, body)))
    assert "end." in doc.text and unshowable(doc.text) == set()


# ---------------------------------------------------------------------------------------
# Archives that expand too far


def docx_with_body(tmp_path: Path, body: bytes, *, extra: tuple[str, int] | None = None) -> bytes:
    """A valid DOCX whose ``<w:body>`` starts with ``body`` (and an ``extra`` part of that
    many zero bytes, written in pieces so that the test never holds it whole)."""
    write_docx(tmp_path / "base.docx")
    out = tmp_path / "built.docx"
    with (
        zipfile.ZipFile(tmp_path / "base.docx") as zin,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout,
    ):
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "word/document.xml":
                head, tail = data.split(b"<w:body>")
                data = head + b"<w:body>" + body + tail
            zout.writestr(info.filename, data)
        if extra is not None:
            name, size = extra
            with zout.open(name, "w", force_zip64=True) as part:
                piece = bytes(2**20)
                for _ in range(size // len(piece)):
                    part.write(piece)
                part.write(bytes(size % len(piece)))
    return out.read_bytes()


def test_docx_of_millions_of_empty_paragraphs_is_refused(tmp_path: Path) -> None:
    # The review's file: 71 KB holding 24 MB of empty paragraphs (50 s and 880 MB to read).
    data = docx_with_body(tmp_path, b"<w:p/>" * 4_000_000)
    assert len(data) < 100_000
    error = load_error(write(tmp_path / "bomb.docx", data))
    assert error.startswith("DOCX refused: ") and "XML elements" in error


def test_docx_that_expands_past_the_limit_is_refused(tmp_path: Path) -> None:
    data = docx_with_body(tmp_path, b"", extra=("word/media/huge.bin", 257 * 2**20))
    error = load_error(write(tmp_path / "bomb.docx", data))
    assert error.startswith("DOCX refused: ") and "expands to" in error


def test_docx_style_lookups_do_not_grow_with_the_paragraphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docx.parts.document import DocumentPart

    calls = []
    real = DocumentPart.get_style

    def counting(self: DocumentPart, *args: object) -> object:
        calls.append(args)
        return real(self, *args)

    monkeypatch.setattr(DocumentPart, "get_style", counting)
    body = b"<w:p><w:r><w:t>A line of text.</w:t></w:r></w:p>" * 2000
    doc = load_one(write(tmp_path / "long.docx", docx_with_body(tmp_path, body)))
    assert doc.text.count("A line of text.") == 2000
    assert len(calls) < 20
