"""Commands beyond the core (evaluation, benchmarks, the UI), kept apart to keep cli.py small.

Each entry adds a subparser and names its handler; handlers import what they need lazily.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]
EXTRA_COMMANDS: dict[str, Handler] = {}


def add_extra_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the extra subcommands on ``sub`` (the main parser's subparsers)."""
    for register in _REGISTRARS:
        register(sub, common)


_REGISTRARS: list[Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]] = []
