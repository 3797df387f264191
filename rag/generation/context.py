"""What a generator plugin is built from, and the check that no setting is lost on it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from rag.config import Settings

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger("rag")


@dataclass(frozen=True)
class GeneratorContext:
    """What a generator plugin is built from (``ragkit.generators`` entry points load a
    callable ``(GeneratorContext) -> Generator``).

    ``embed`` is the collection's embedder (a function returning L2-normalised float32
    rows), for generators that match text by meaning. ``base_url`` is an endpoint chosen
    at run time (the UI's endpoint picker, among those its operator configures); the API
    key from the environment is sent only to the endpoint the environment configures,
    never to another one.
    """

    settings: Settings
    embed: Callable[[Sequence[str]], np.ndarray] | None = None
    base_url: str | None = None


def unused(ctx: GeneratorContext, generator: str, **options: str) -> None:
    """Say so when a setting given for another generator has no effect on this one:
    ``options`` maps Settings fields to how the user sets them."""
    defaults = {f.name: f.default for f in fields(Settings)}
    for name, how in options.items():
        value = getattr(ctx.settings, name)
        if value is not None and value != defaults[name]:
            logger.warning(
                "%s=%r has no effect on the %s generator (%s)", how, value, generator, name
            )
