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
from rag.commands import (
    EXIT_ERROR,
    EXIT_USAGE,
    Command,
    add_collection_options,
    add_global_options,
    printable,
)
from rag.errors import (
    ConfigError,
    FilterError,
    MissingDependencyError,
    PluginConflictError,
    PluginError,
    RagError,
)

_TOP_LEVEL = ("data_dir", "collection", "store", "store_url", "store_opt", "json")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``rag`` parser and each command's subparser, from the registry."""
    parser = argparse.ArgumentParser(
        prog="rag",
        description="Ingest documents, search them and ask questions about them, offline.",
    )
    add_global_options(parser)
    # Collection options may also come before the command (`rag --data-dir X ingest ...`);
    # main() refuses them for a command that does not take them.
    add_collection_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}
    registry = plugins.registry()
    clash = registry.clashes("commands")
    if clash:
        raise clash[0].error()
    for name, plugin in registry.plugins("commands").items():
        command = plugin.load()
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser, subparsers = build_parser()
    except RagError as e:
        print(f"rag: error: {printable(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    args, extra = parser.parse_known_args(argv)
    command: Command = args._command
    if command.passthrough:
        args.argv = [*extra, *args.argv]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    refused = _refused_options(args, subparsers[args.command])
    if refused:
        subparsers[args.command].error(
            f"{', '.join(refused)} does not apply to `rag {args.command}`"
        )
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


def _refused_options(args: argparse.Namespace, sub: argparse.ArgumentParser) -> list[str]:
    """Options given before the command name that the command does not take."""
    accepted = set() if args._command.passthrough else _dests(sub)
    return [
        "--" + dest.replace("_", "-")
        for dest in _TOP_LEVEL
        if hasattr(args, dest) and dest not in accepted
    ]


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    """Every destination ``parser`` and its nested subparsers define."""
    out: set[str] = set()
    for action in parser._actions:
        out.add(action.dest)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out |= _dests(child)
    return out


if __name__ == "__main__":
    sys.exit(main())
