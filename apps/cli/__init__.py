"""The ``rag`` command: its subcommands are the plugins of the ``ragkit.commands`` group.

Errors print one line on stderr and exit 1 (2 for bad usage); ``--debug`` shows the
traceback. Commands import their heavy packages only when they run, so ``rag --help``
stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from rag import plugins
from rag.commands import EXIT_ERROR, EXIT_USAGE, Command, add_global_options, printable
from rag.errors import (
    ConfigError,
    FilterError,
    MissingDependencyError,
    PluginConflictError,
    PluginError,
    RagError,
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``rag`` parser and each command's subparser, from the registry."""
    parser = argparse.ArgumentParser(
        prog="rag",
        description="Ingest documents, search them and ask questions about them, offline.",
        epilog="A command's options may come before or after its name "
        "(`rag --data-dir D search ...`); `rag COMMAND --help` lists them.",
    )
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}
    registry = plugins.registry()
    clash = registry.clashes("commands")
    if clash:
        raise clash[0].error()
    for name, plugin in registry.plugins("commands").items():
        try:
            command = plugin.load()
        except (PluginError, MissingDependencyError) as e:
            # One broken or uninstalled plugin does not take the other commands down: it
            # fails when it is run, with its reason.
            command = _unavailable(e, plugin.summary() or "a command")
        if not isinstance(command, Command):
            raise PluginError(
                f"the command {name!r} from {plugin.package} ({plugin.target}) is a "
                f"{type(command).__name__}, not a rag.commands.Command"
            )
        p = sub.add_parser(
            name, help=command.help, description=command.help, add_help=not command.passthrough
        )
        add_global_options(p)
        if command.passthrough:
            p.add_argument("argv", nargs=argparse.REMAINDER)
        else:
            command.configure(p)
        p.set_defaults(_command=command)
        subparsers[name] = p
    return parser, subparsers


def _unavailable(error: RagError, summary: str) -> Command:
    """A command that could not be loaded: listed by ``rag --help``, and failing with
    ``error`` when run (exit 1: the installation is at fault, not the command line; any
    arguments are taken, so that the reason is what the user sees)."""

    def run(args: argparse.Namespace) -> int:
        print(f"rag: error: {printable(str(error))}", file=sys.stderr)
        return EXIT_ERROR

    return Command(
        help=f"{summary} (unavailable: run it for the reason)",
        configure=lambda p: None,
        run=run,
        passthrough=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser, subparsers = build_parser()
    except RagError as e:
        print(f"rag: error: {printable(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    argv = command_first(list(sys.argv[1:] if argv is None else argv), subparsers)
    args, extra = parser.parse_known_args(argv)
    command: Command = args._command
    if command.passthrough:
        args.argv = [*extra, *args.argv]
    elif extra:
        subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False)
    if not debug:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return command.run(args)
    except KeyboardInterrupt:
        print("\nrag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`rag ... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except RagError as e:
        if debug:
            raise
        print(f"rag: error: {printable(str(e))}", file=sys.stderr)
        return exit_status(e)
    except Exception as e:  # anything else is a bug or an environment problem
        if debug:
            raise
        print(
            f"rag: unexpected error: {type(e).__name__}: {printable(str(e))} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def exit_status(error: RagError) -> int:
    """2 for a mistake in what the user asked (a malformed or unknown option value, a bad
    filter), 1 for everything else (a missing package, a store, a model, the files)."""
    if isinstance(error, MissingDependencyError | PluginConflictError):
        return EXIT_ERROR  # the installation, not the command line
    return EXIT_USAGE if isinstance(error, ConfigError | FilterError) else EXIT_ERROR


def command_first(argv: list[str], subparsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """``argv`` with the options given before the command name moved after it, so that
    ``rag --k 3 search x`` reads as ``rag search --k 3 x``; the command then accepts or
    refuses each option as its own. ``--help`` and ``--debug`` stay where they are."""
    takes_value: dict[str, bool] = {}
    for sub in subparsers.values():
        _options(sub, takes_value)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        name = argv[i].split("=", 1)[0]
        i += 2 if takes_value.get(name) and "=" not in argv[i] else 1
    if i >= len(argv) or argv[i] not in subparsers:
        return argv
    before = argv[:i]
    keep = [a for a in before if a in ("-h", "--help", "--debug")]
    moved = [a for a in before if a not in ("-h", "--help", "--debug")]
    # Past nested command names too (`rag --data-dir D eval retrieval ...`): the options
    # belong to the innermost command.
    names, j, parser = [argv[i]], i + 1, subparsers[argv[i]]
    while j < len(argv) and (inner := _subcommands(parser)) and argv[j] in inner:
        names.append(argv[j])
        parser = inner[argv[j]]
        j += 1
    return [*keep, *names, *moved, *argv[j:]]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser, out: dict[str, bool]) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _options(child, out)
        for option in action.option_strings:
            out[option] = action.nargs != 0


if __name__ == "__main__":
    sys.exit(main())
