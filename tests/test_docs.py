"""The documentation cannot drift from the program: every `rag ...` command line in
README.md, docs/*.md and data/*.md (the user guide) is accepted by the real CLI parser, and
the README's Python examples run.

Command lines come from shell code blocks (continuations joined, prompts, comments and
environment assignments dropped, `&&`, `|` and `;` split) and from inline code. Placeholders
stand for a value: `PATH...`, `DIR`, `NAME` and other upper-case words become a plain word,
`N` a number, `$VAR` a plain word, `a|b|c` its first choice. An inline mention may leave out
a required argument (`rag eval retrieval` names the command); a code block may not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apps import cli
from apps.cli import build_parser
from rag.filters import parse as parse_filter
from tests.conftest import DATA, ROOT

DOC_FILES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *DATA.glob("*.md")],
    key=lambda p: p.relative_to(ROOT).as_posix(),
)
SHELL_LANGS = {"", "sh", "bash", "shell", "console", "zsh"}
_FENCE = re.compile(r"^([ \t]*)(```|~~~)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1\2[ \t]*$", re.M | re.S)
_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.\.\.)?|<[^<>]+>")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_]\w*\}?")
_ENV_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=")
_CHOICES = re.compile(r"(?<![\w|])([A-Za-z][\w-]*)(?:\|[A-Za-z][\w-]*)+(?![\w|])")
_MENTIONS_RAG = re.compile(r"(?:^|[\s;&|/])rag(?:\s|$)")
_SEPARATORS = {"&&", "||", "|", ";", "&"}
_REQUIRED = "the following arguments are required"


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str  # as written (continuations joined)
    argv: tuple[str, ...]  # after `rag`, placeholders filled in
    inline: bool
    error: str = ""  # why the line could not be read as shell


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


#: What a placeholder becomes; :func:`check` makes it a value the option takes.
HOLE = "<placeholder>"


def _fill(token: str) -> str:
    """A placeholder token as a value the parser takes."""
    if token == "N":
        return "1"
    if _PLACEHOLDER.fullmatch(token) or _VARIABLE.fullmatch(token):
        return HOLE
    return _VARIABLE.sub("x", token) if token.startswith("$") else token


def _rag_commands(line: str) -> list[list[str]]:
    """The argument lists of the `rag` commands in one shell line (empty when none)."""
    line = _CHOICES.sub(r"\1", line)  # `faiss|chroma` is a choice, not a pipe
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    tokens = list(lex)
    out: list[list[str]] = []
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in _SEPARATORS:
            segment.append(token)
            continue
        while segment and _ENV_ASSIGNMENT.match(segment[0]):
            segment.pop(0)
        if segment and (segment[0] == "rag" or segment[0].endswith("/rag")):
            out.append([_fill(t) for t in segment[1:]])
        segment = []
    return out


def extract(path: Path) -> list[DocCommand]:
    """Every `rag` command line of one Markdown file."""
    text = path.read_text(encoding="utf-8")
    name = path.relative_to(ROOT).as_posix()
    found: list[DocCommand] = []
    for m in _FENCE.finditer(text):
        if m.group(3).lower() not in SHELL_LANGS:
            continue
        body_start = m.start(4)
        lines = m.group(4).split("\n")
        i = 0
        while i < len(lines):
            first = i
            line = lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            line = re.sub(r"^\s*[$>]\s+", "", line).strip()
            if not line or line.startswith("#"):
                continue
            if not _MENTIONS_RAG.search(line):
                continue
            where = f"{name}:{_line_of(text, body_start) + first}"
            try:
                commands = _rag_commands(line)
            except ValueError as e:  # unbalanced quotes
                found.append(DocCommand(where, line, (), inline=False, error=str(e)))
                continue
            found.extend(DocCommand(where, line, tuple(argv), inline=False) for argv in commands)
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in _INLINE.finditer(prose):
        code = " ".join(m.group(1).split())
        if not code.startswith("rag "):
            continue
        where = f"{name}:{_line_of(prose, m.start())}"
        try:
            commands = _rag_commands(code)
        except ValueError as e:
            found.append(DocCommand(where, code, (), inline=True, error=str(e)))
            continue
        found.extend(DocCommand(where, code, tuple(argv), inline=True) for argv in commands)
    return found


ALL_COMMANDS = [c for path in DOC_FILES for c in extract(path)]


class _Refused(Exception):
    pass


def _raise_instead(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` raise instead of printing its usage and exiting."""

    def error(message: str) -> None:
        raise _Refused(f"{parser.prog}: {message}")

    parser.error = error  # type: ignore[method-assign]


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every subparser under it."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out.extend(_parsers(child))
    return out


def _bench_parser() -> argparse.ArgumentParser:
    from eval.bench import build_parser as build_bench_parser

    return build_bench_parser()


def _fill_holes(argv: list[str], parsers: list[argparse.ArgumentParser]) -> list[str]:
    """Placeholders as values: an option's first choice where it has choices, else "x"."""
    choices: dict[str, str] = {}
    for p in parsers:
        for action in p._actions:
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                for option in action.option_strings:
                    choices[option] = str(next(iter(action.choices)))
    return [
        (choices.get(argv[i - 1], "x") if i else "x") if a == HOLE else a
        for i, a in enumerate(argv)
    ]


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list]:
    try:
        return parser.parse_known_args(argv)
    except SystemExit as e:  # --help, or a parser that exits without calling error()
        if e.code:
            raise _Refused(f"exit {e.code}") from e
        return argparse.Namespace(_help=True), []


def check(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as `rag` does; raise :class:`_Refused` with the parser's message where
    `rag` would refuse it as bad usage."""
    parser, subparsers = build_parser()
    parsers = _parsers(parser)
    if any(a == HOLE for a in argv):
        argv = _fill_holes(argv, [*parsers, _bench_parser()])
    # Options before the command name: as rag's main() reads them.
    if hasattr(cli, "command_first"):
        argv = cli.command_first(argv, subparsers)
    for p in parsers:
        _raise_instead(p)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        args, extra = _parse(parser, argv)
        if getattr(args, "_help", False):
            return args
        command = args._command
        # Options before the command name that the command does not take (where rag's
        # parser itself has them).
        top = {a.dest for a in parser._actions} - {"help", "command", "debug"}
        accepted = set() if command.passthrough else _dests(subparsers[args.command])
        refused = sorted(d for d in top if hasattr(args, d) and d not in accepted)
        if refused:
            raise _Refused(f"{refused} do not apply to `rag {args.command}`")
        if command.passthrough:
            bench = _bench_parser()
            _raise_instead(bench)
            inner, extra = _parse(bench, [*extra, *args.argv])
            vars(args).update(vars(inner))
        if extra:
            raise _Refused(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for p in _parsers(parser) for a in p._actions}


def test_the_documentation_has_command_lines_to_check() -> None:
    """The extraction works: known lines of each kind are found."""
    found = {(c.where.split(":")[0], c.argv, c.inline) for c in ALL_COMMANDS}
    assert ("README.md", ("search", "how do I rotate the keys?"), False) in found
    assert ("data/12-cli-reference.md", ("ingest", HOLE), True) in found  # `rag ingest PATH...`
    assert any(c.argv[:2] == ("eval", "retrieval") for c in ALL_COMMANDS)
    assert any(c.argv[:1] == ("bench",) and not c.inline for c in ALL_COMMANDS)
    assert {c.where.split(":")[0] for c in ALL_COMMANDS} >= {
        "README.md",
        "docs/ui.md",
        "data/12-cli-reference.md",
    }
    assert len(ALL_COMMANDS) > 80


def test_extraction_of_shell_forms() -> None:
    assert _rag_commands("RAG_MAX_FILE_MB=200 rag ingest archive/ # a comment") == [
        ["ingest", "archive/"]
    ]
    assert _rag_commands("rm -rf /tmp/x && .venv/bin/rag --data-dir $DIR ask 'Why?' | head") == [
        ["--data-dir", HOLE, "ask", "Why?"]
    ]
    assert _rag_commands("""rag search "x" --where '{"page": {"$gte": 2}}' --k N""") == [
        ["search", "x", "--where", '{"page": {"$gte": 2}}', "--k", "1"]
    ]
    assert _rag_commands("rag ingest --store faiss|chroma DIR") == [
        ["ingest", "--store", "faiss", HOLE]
    ]
    assert _rag_commands("pip install ragkit") == []


def test_the_checker_refuses_what_rag_refuses() -> None:
    for argv in (
        ["search", "x", "--no-such-option"],
        ["no-such-command"],
        ["--collection", "c", "stores"],  # an option the command does not take
        ["search", "x", "--k", "many"],
        ["bench", "--no-such-option"],
    ):
        with pytest.raises(_Refused):
            check(argv)
    check(["--data-dir", "d", "search", "x", "--k", "3"])


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: f"{c.where} {c.text}"[:120])
def test_documented_command_line_parses(cmd: DocCommand) -> None:
    if cmd.error:
        pytest.fail(f"{cmd.where}: `{cmd.text}` is not a shell command line: {cmd.error}")
    try:
        args = check(list(cmd.argv))
    except _Refused as e:
        if cmd.inline and _REQUIRED in str(e):
            return  # a mention of the command, not a whole command line
        pytest.fail(f"{cmd.where}: `{cmd.text}` is refused by the CLI: {e}")
    where = getattr(args, "where", None)
    if isinstance(where, str) and where != "x":  # "x": a placeholder
        parse_filter(where)  # the documented filter is valid too


def _python_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [
        (f"README.md:{_line_of(text, m.start())}", m.group(4))
        for m in _FENCE.finditer(text)
        if m.group(3).lower() == "python"
    ]


def test_the_readme_has_a_python_example() -> None:
    blocks = _python_blocks()
    assert blocks
    assert any("open_collection" in code and ".ask(" in code for _, code in blocks)


#: An example that talks to `rag serve` at its default address.
_SERVER = "http://127.0.0.1:8000"


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), _python_blocks(), ids=lambda v: v.split("\n")[0])
def test_readme_python_example_runs(where: str, code: str, tmp_path: Path) -> None:
    """Each example runs as written, from a folder holding a copy of data/ (as from the
    repository root), offline, with the default embedding model and generator. An example
    that calls `rag serve` runs against a real one over data/ (on a free port instead of
    8000, with the extractive generator)."""
    shutil.copytree(DATA, tmp_path / "data")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    with contextlib.ExitStack() as stack:
        if _SERVER in code:
            code = code.replace(_SERVER, stack.enter_context(_rag_serve(tmp_path, env)))
        script = tmp_path / "example.py"
        script.write_text(code, encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert proc.returncode == 0, f"{where}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip()


@contextlib.contextmanager
def _rag_serve(folder: Path, env: dict[str, str]) -> Iterator[str]:
    """`rag serve` over data/ ingested into ``folder``/.rag; yields its base URL."""
    import httpx

    from tests.serve_support import free_port

    rag = [sys.executable, "-m", "apps.cli", "--data-dir", str(folder / ".rag")]
    subprocess.run([*rag, "ingest", str(folder / "data")], env=env, check=True, timeout=600)
    port = free_port()
    server = subprocess.Popen(
        [*rag, "serve", "--port", str(port), "--generator", "extractive"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"rag serve did not start (exit {server.poll()})")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
