"""The command contract of the ``rag`` CLI, and the options commands share.

A command is a plugin of the ``ragkit.commands`` entry-point group whose object is a
:class:`Command`: a help line, a function that adds its arguments to its parser, and a
function that runs it. ragkit's own commands (``ingest``, ``search``, ``ui``, ``eval``,
``bench``, ...) are declared exactly as a third party's::

    [project.entry-points."ragkit.commands"]
    hello = "mypackage.cli:hello"

    # mypackage/cli.py
    from rag.commands import Command, add_collection_options, settings_from_args

    def _configure(parser):
        add_collection_options(parser)

    def _run(args):
        print(f"hello from {settings_from_args(args).collection}")
        return 0

    hello = Command(help="say hello", configure=_configure, run=_run)

Options that set a :class:`~rag.config.Settings` field are declared here, each with the
field it sets (:data:`SETTINGS_OPTIONS`), and :func:`settings_from_args` carries every one
the command defines into the settings, so that no such option can be parsed and dropped.
Command modules should import only what their ``configure`` needs: ``rag --help`` loads
every command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rag.config import RETRIEVAL_MODES, Settings
from rag.errors import ConfigError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


@dataclass(frozen=True)
class Command:
    """One ``rag`` subcommand."""

    #: One line for ``rag --help``.
    help: str
    #: Adds the command's arguments to its subparser.
    configure: Callable[[argparse.ArgumentParser], None]
    #: Runs the command; returns the exit status.
    run: Callable[[argparse.Namespace], int]
    #: The command parses its own arguments: everything after its name reaches ``run`` as
    #: ``args.argv`` (``rag bench`` hands them to the benchmark's own parser).
    passthrough: bool = False


#: argparse destination -> the Settings field it sets.
SETTINGS_OPTIONS: dict[str, str] = {
    "data_dir": "data_dir",
    "collection": "collection",
    "store": "store",
    "store_url": "store_url",
    "store_opt": "store_options",
    "log_queries": "log_queries",
    "recall": "recall",
    "k": "k",
    "mode": "mode",
    "mmr_lambda": "mmr_lambda",
    "fusion": "fusion",
    "rrf_k": "rrf_k",
    "weight": "fusion_weight",
    "rerank": "rerank_model",
    "generator": "generator",
    "llm_model": "llm_model",
    "local_model": "local_model",
    "max_tokens": "max_tokens",
    "routes": "routes",
    "chunk_size": "chunk_size",
    "chunk_overlap": "chunk_overlap",
    "embed_model": "embed_model",
    "embed_backend": "embed_backend",
    "max_file_mb": "max_file_mb",
}
#: Options every command may take before or after its name.
GLOBAL_OPTIONS = ("debug",)


def add_collection_options(
    parser: argparse.ArgumentParser,
    *,
    collection: bool = True,
    store: bool = True,
    json_output: bool = True,
) -> None:
    """--data-dir, and unless turned off: --collection; --store, --store-url, --store-opt;
    --json."""
    # Defaults are SUPPRESS so that an option given before the command name is not
    # overwritten by the subcommand's default.
    s = argparse.SUPPRESS
    g = parser.add_argument_group("collection options")
    g.add_argument(
        "--data-dir", default=s, help="where collections live (default .rag, or RAG_DATA_DIR)"
    )
    if collection:
        g.add_argument(
            "--collection",
            "-c",
            default=s,
            help="collection name (default 'default', or RAG_COLLECTION)",
        )
    if store:
        g.add_argument(
            "--store",
            default=s,
            help=f"vector store: {', '.join(_names('stores'))} (default faiss, or RAG_STORE)",
        )
        g.add_argument(
            "--store-url",
            default=s,
            help="a server for the store (Chroma/Qdrant URL, PostgreSQL DSN)",
        )
        g.add_argument(
            "--store-opt",
            action="append",
            default=s,
            metavar="KEY=VALUE",
            help="a backend option, e.g. index=hnsw (repeatable)",
        )
    if json_output:
        add_json_option(parser)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON object"
    )


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and library warnings",
    )


def add_retrieval_options(parser: argparse.ArgumentParser) -> None:
    """--k, --where, --mode, --mmr and the fusion and re-ranking options."""
    g = parser.add_argument_group("retrieval options")
    g.add_argument(
        "--k", "-k", type=int, default=None, help="how many passages (default 5, or RAG_K)"
    )
    g.add_argument(
        "--where",
        default=None,
        metavar="JSON",
        help='metadata filter, e.g. \'{"file_type": "pdf", "page": {"$gte": 2}}\'',
    )
    g.add_argument(
        "--mode",
        choices=RETRIEVAL_MODES,
        default=None,
        help="dense (default), bm25 or hybrid (both, fused); RAG_MODE",
    )
    g.add_argument("--mmr", action="store_true", help="re-rank the passages for diversity")
    g.add_argument(
        "--mmr-lambda",
        type=float,
        default=None,
        help="MMR trade-off, 1 = relevance only, 0 = diversity only (default 0.5, RAG_MMR_LAMBDA)",
    )
    g.add_argument(
        "--fusion",
        choices=("rrf", "weighted"),
        default=None,
        help="how hybrid fuses: reciprocal rank fusion (default) or weighted scores (RAG_FUSION)",
    )
    g.add_argument(
        "--rrf-k",
        type=int,
        default=None,
        help="RRF's k: each rank r adds 1/(k + r) (default 60, RAG_RRF_K)",
    )
    g.add_argument(
        "--weight",
        type=float,
        default=None,
        help="weighted fusion: share of the dense score, 0..1 (default 0.5, RAG_FUSION_WEIGHT)",
    )
    g.add_argument(
        "--rerank",
        default=None,
        metavar="MODEL",
        help="re-rank with a cross-encoder you have (a local folder; RAG_RERANK_MODEL)",
    )


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """--generator, --llm-model, --local-model, --max-tokens, --routes."""
    g = parser.add_argument_group("generation options")
    g.add_argument(
        "--generator",
        choices=("auto", *_names("generators")),
        default=None,
        help="auto (default): openai when OPENAI_BASE_URL/OPENAI_API_KEY is set, else local",
    )
    g.add_argument(
        "--llm-model",
        default=None,
        help="model name at the OpenAI-compatible endpoint (RAG_LLM_MODEL)",
    )
    g.add_argument(
        "--local-model", default=None, help="a GGUF file for the local generator (RAG_LOCAL_MODEL)"
    )
    g.add_argument("--max-tokens", type=int, default=None, help="longest answer, in tokens")
    g.add_argument(
        "--routes",
        metavar="FILE",
        default=None,
        help="choose the generator per question by the rules in this TOML file (RAG_ROUTES; "
        "default: <data dir>/routes.toml when it exists; see docs/routing.md)",
    )


def add_log_queries_option(parser: argparse.ArgumentParser) -> None:
    """--log-queries: what the collection's query log keeps of each question, saved with the
    collection (:mod:`rag.monitoring.querylog`); a :data:`SETTINGS_OPTIONS` entry, so
    :func:`settings_from_args` carries it into ``Settings.log_queries``."""
    from rag.config import LOG_QUERIES

    parser.add_argument(
        "--log-queries",
        choices=LOG_QUERIES,
        default=None,
        help="what the query log keeps of each question, saved with the collection: none "
        "(default: timings and scores only), vector (and its embedding), text (and the "
        "question), off (no log); RAG_LOG_QUERIES",
    )


def add_recall_option(parser: argparse.ArgumentParser) -> None:
    """--recall: the recall target an ingest chooses the store's index for, saved with the
    collection (a :data:`SETTINGS_OPTIONS` entry, carried into ``Settings.recall``)."""
    parser.add_argument(
        "--recall",
        type=float,
        default=None,
        metavar="TARGET",
        help="the recall@10 to choose the store's index and search setting for, measured on "
        "the collection's own vectors and saved with it (default: the collection's, else "
        "0.95; 1 = exact; RAG_RECALL); --store-opt options override the choice. A store that "
        "cannot choose refuses it (faiss and pgvector can)",
    )


def add_embedding_options(parser: argparse.ArgumentParser) -> None:
    """--embed-model and --embed-backend."""
    parser.add_argument(
        "--embed-model",
        default=None,
        help="sentence-transformers model name or path (RAG_EMBED_MODEL)",
    )
    parser.add_argument(
        "--embed-backend",
        choices=_names("embedders"),
        default=None,
        help="how the model runs (RAG_EMBED_BACKEND; default for the default model: "
        "openvino-int8 on CPUs with VNNI, else onnx-int8)",
    )


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment, overridden by every settings option in ``args``
    (see :data:`SETTINGS_OPTIONS`), overridden by ``overrides``."""
    values: dict[str, Any] = {}
    for dest, field in SETTINGS_OPTIONS.items():
        value = getattr(args, dest, None)
        if dest == "store_opt" and value is not None:
            value = parse_store_options(value)
        values[field] = value
    values.update(overrides)
    return Settings.from_env(**values)


def parse_store_options(items: list[str]) -> dict[str, str] | None:
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--store-opt takes KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    return options or None


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit(obj: Any) -> None:
    """Print one JSON object on stdout."""
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def display_path(path: str) -> str:
    """A path as the user would type it from here (relative when that is shorter), safe to
    print (see :func:`printable`)."""
    with contextlib.suppress(ValueError):
        path = os.path.relpath(path)
    return printable(path)


#: C0 and C1 control characters except tab and newline, DEL, and the Unicode controls that
#: reorder or break lines (bidirectional overrides and isolates, line/paragraph separators).
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe to print to a terminal: control characters, which a document could use
    to set the window title, write the clipboard (OSC 52) or move the cursor to fake output,
    are shown as escapes (``\\x1b``), and so are bytes of a file name that are not UTF-8."""
    text = _UNSAFE.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _names(group: str) -> list[str]:
    from rag import plugins

    return plugins.names(group)
