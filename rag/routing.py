"""A generator router: which generator answers a question, chosen by rules in a TOML file.

The routes file is ``--routes FILE`` (``RAG_ROUTES``, :attr:`Settings.routes`), or else
``<data dir>/routes.toml`` when it exists. It names generators and the rules that pick one
for each question, from the question and the passages retrieved for it (docs/routing.md)::

    default = "cloud"

    [generators.cloud]
    kind = "openai"
    base_url = "https://api.example.com/v1"
    model = "big-model"
    api_key_env = "EXAMPLE_API_KEY"

    [generators.quotes]
    kind = "extractive"

    [[rules]]
    source = "*/private/*"
    local_only = true
    generator = "quotes"

Rules are tried in order and the first whose conditions all hold wins; none: ``default``.
A rule with ``local_only = true`` is a privacy rule: when it matches, the passages are
private and only a local generator may answer them. The router decides after retrieval
and before any generator is called, so a refusal (:class:`~rag.errors.RouteRefused`)
sends nothing anywhere.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import tomllib
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.config import Settings
from rag.errors import ConfigError, FilterError, RouteRefused
from rag.filters import Filter, evaluate, parse
from rag.types import Hit

if TYPE_CHECKING:
    import numpy as np

    from rag.generation import Generator

__all__ = ["GeneratorSpec", "Route", "Router", "Rule", "find_routes", "router_for"]

#: The routes file a data directory may hold.
ROUTES_FILE = "routes.toml"
KINDS = ("openai", "local", "extractive")
_GENERATOR_KEYS = {
    "openai": {"kind", "base_url", "model", "api_key_env", "local"},
    "local": {"kind", "model"},
    "extractive": {"kind"},
}
_RULE_KEYS = {
    "generator",
    "where",
    "source",
    "question",
    "min_words",
    "max_words",
    "min_chars",
    "max_chars",
    "below_score",
    "above_score",
    "local_only",
}
_TOP_KEYS = {"default", "generators", "rules"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class GeneratorSpec:
    """One ``[generators.NAME]`` table."""

    name: str
    kind: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    #: Runs on this machine: local and extractive always, an openai endpoint when it says
    #: ``local = true`` (a self-hosted server).
    local: bool = False


@dataclass(frozen=True)
class Rule:
    """One ``[[rules]]`` table; its conditions must all hold."""

    number: int
    line: int
    generator: str | None
    where: Filter | None = None
    source: str | None = None
    question: re.Pattern[str] | None = None
    min_words: int | None = None
    max_words: int | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    below_score: float | None = None
    above_score: float | None = None
    local_only: bool = False
    #: The conditions as written, for the reason an answer reports.
    shown: tuple[str, ...] = ()

    def matches(self, question: str, hits: Sequence[Hit]) -> bool:
        words = len(question.split())
        if self.min_words is not None and words < self.min_words:
            return False
        if self.max_words is not None and words > self.max_words:
            return False
        chars = len(question.strip())
        if self.min_chars is not None and chars < self.min_chars:
            return False
        if self.max_chars is not None and chars > self.max_chars:
            return False
        if self.question is not None and not self.question.search(question):
            return False
        if self.below_score is not None or self.above_score is not None:
            if not hits:
                return False
            top = max(float(h.score) for h in hits)
            if self.below_score is not None and not top < self.below_score:
                return False
            if self.above_score is not None and not top > self.above_score:
                return False
        if self.where is not None or self.source is not None:
            return any(self._passage(h) for h in hits)
        return True

    def _passage(self, hit: Hit) -> bool:
        if self.where is not None and not evaluate(self.where, hit.chunk.metadata):
            return False
        return self.source is None or fnmatch.fnmatchcase(hit.chunk.source, self.source)

    def private(self, hits: Sequence[Hit]) -> list[Hit]:
        """The passages this rule makes private (when it matches)."""
        if self.where is None and self.source is None:
            return list(hits)
        return [h for h in hits if self._passage(h)]


@dataclass(frozen=True)
class Route:
    """The router's choice for one question."""

    name: str
    reason: str
    local: bool


class _Unchanged:
    """Stands in for a generator where the question is not rewritten."""

    name = model = "none"

    def rewrite_question(self, question: str, history: object) -> str:
        return question


@dataclass
class Router:
    """The rules of one routes file, and the generators built for them (one per name)."""

    path: Path
    generators: dict[str, GeneratorSpec]
    rules: list[Rule]
    default: str
    _built: dict[str, Generator] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path | str) -> Router:
        """Reads and checks a routes file. Raises ``ConfigError`` naming the file and line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the routes file {path}: {e}") from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        return _Loader(path, text).build(data)

    # -- deciding --------------------------------------------------------------------------

    def decide(self, question: str, hits: Sequence[Hit]) -> Route:
        """The route for ``question`` given the retrieved ``hits``. Raises ``RouteRefused``
        when private passages would go to a generator that is not local."""
        privacy = next((r for r in self.rules if r.local_only and r.matches(question, hits)), None)
        chosen: Rule | None = None
        for rule in self.rules:
            if rule.generator is not None and rule.matches(question, hits):
                chosen = rule
                break
        if chosen is None:
            name, why = self.default, "no rule matched: the default"
        else:
            assert chosen.generator is not None
            name, why = chosen.generator, f"{self._where(chosen)} matched ({_and(chosen.shown)})"
        spec = self.generators[name]
        if privacy is not None:
            private = privacy.private(hits)
            shown = private[0].chunk.source if private else "the question"
            what = f"{len(private)} private passage{'s' if len(private) != 1 else ''}"
            if not spec.local:
                raise RouteRefused(
                    f"refused: {what} (from {shown}) matched the local_only "
                    f"{self._where(privacy)}, and the route chose {name!r}, which is not "
                    f"local ({why}); nothing was sent. Put the privacy rule first, or mark a "
                    "self-hosted endpoint local = true"
                )
            why += f"; {what}" if privacy is chosen else f"; {what} ({self._where(privacy)})"
        return Route(name=name, reason=why, local=spec.local)

    def _where(self, rule: Rule) -> str:
        return f"rule {rule.number} ({self.path.name} line {rule.line})"

    # -- building --------------------------------------------------------------------------

    def generator(
        self,
        name: str,
        settings: Settings,
        *,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> Generator:
        """The generator named ``name`` in the routes file, built once."""
        if name not in self._built:
            self._built[name] = _build(self.generators[name], settings, embed)
        return self._built[name]

    def rewriter(
        self,
        settings: Settings,
        *,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
        history: bool = False,
    ) -> Generator | _Unchanged:
        """What rewrites a follow-up question before retrieval: a local generator (the
        default when it is local, else the first local one declared), since the history may
        quote private passages and the passages are not retrieved yet. None local: the
        question is searched for as asked."""
        if not history:
            return _Unchanged()
        names = [self.default, *self.generators]
        name = next((n for n in names if self.generators[n].local), None)
        return _Unchanged() if name is None else self.generator(name, settings, embed=embed)


def _build(
    spec: GeneratorSpec,
    settings: Settings,
    embed: Callable[[Sequence[str]], np.ndarray] | None,
) -> Generator:
    from rag.generation import load_generator

    if spec.kind == "local":
        s = replace(settings, generator="local", local_model=spec.model or settings.local_model)
        return load_generator(s, embed=embed)
    if spec.kind == "extractive":
        return load_generator(replace(settings, generator="extractive"), embed=embed)
    s = replace(settings, generator="openai", llm_model=spec.model)
    if spec.api_key_env is None:
        return load_generator(s, embed=embed, base_url=spec.base_url)
    # The plugin sends OPENAI_API_KEY only to OPENAI_BASE_URL; a route's own key, from the
    # variable it names, goes only to the route's own endpoint.
    from rag.generation.openai_compat import OpenAIGenerator

    key = os.environ.get(spec.api_key_env)
    if not key:
        raise ConfigError(
            f"the route {spec.name!r} reads its API key from ${spec.api_key_env}, which is not set"
        )
    return OpenAIGenerator(
        spec.model,
        base_url=spec.base_url,
        api_key=key,
        max_tokens=settings.max_tokens or 512,
        temperature=settings.temperature,
    )


# -- finding the file --------------------------------------------------------------------------


def find_routes(settings: Settings) -> Path | None:
    """The routes file for ``settings``: ``settings.routes`` (an error when missing), else
    ``<data dir>/routes.toml`` when it exists, else ``None``."""
    if settings.routes is not None:
        path = Path(settings.routes).expanduser()
        if not path.is_file():
            raise ConfigError(f"the routes file {path} does not exist (--routes / RAG_ROUTES)")
        return path
    path = Path(settings.data_dir) / ROUTES_FILE
    return path if path.is_file() else None


_ROUTERS: weakref.WeakKeyDictionary[Any, tuple[tuple[str, int, int], Router]] = (
    weakref.WeakKeyDictionary()
)


def router_for(owner: Any) -> Router | None:
    """The router for ``owner`` (a collection: its ``settings``), or ``None`` without a
    routes file. Kept with ``owner`` so that each route's generator is built once, and read
    again when the file changes."""
    path = find_routes(owner.settings)
    if path is None:
        return None
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    cached = _ROUTERS.get(owner)
    if cached is not None and cached[0] == key:
        return cached[1]
    router = Router.load(path)
    _ROUTERS[owner] = (key, router)
    return router


# -- reading the file --------------------------------------------------------------------------


def _and(parts: Sequence[str]) -> str:
    return ", ".join(parts) if parts else "no conditions"


class _Loader:
    """Checks a parsed routes file, naming the line of each problem."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = _locate(text)

    def fail(self, message: str, *where: object) -> ConfigError:
        line = None
        for n in range(len(where), 0, -1):
            line = self.lines.get(tuple(where[:n]))
            if line is not None:
                break
        at = f"line {line}" if line is not None else "top level"
        return ConfigError(f"{self.path}, {at}: {message}")

    def build(self, data: Mapping[str, Any]) -> Router:
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail(
                    f"unknown key {key!r}; expected default, [generators.NAME] or [[rules]]",
                    key,
                )
        gens = data.get("generators", {})
        if not isinstance(gens, dict) or not gens:
            raise self.fail("no generators: add a [generators.NAME] table", "generators")
        generators = {name: self.generator(name, table) for name, table in gens.items()}
        default = data.get("default")
        if not isinstance(default, str):
            raise self.fail("default = NAME (a generator's name) is missing", "default")
        self.known(default, generators, "default")
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise self.fail("rules must be [[rules]] tables", "rules")
        out = [self.rule(i, table, generators) for i, table in enumerate(rules)]
        return Router(self.path, generators, out, default)

    def known(self, name: str, generators: Mapping[str, GeneratorSpec], *where: object) -> None:
        if name not in generators:
            raise self.fail(
                f"unknown generator {name!r}; declared: {', '.join(sorted(generators))}", *where
            )

    def generator(self, name: str, table: Any) -> GeneratorSpec:
        at = ("generators", name)
        if not isinstance(table, dict):
            raise self.fail(f"generators.{name} must be a table", *at)
        kind = table.get("kind")
        if kind not in KINDS:
            raise self.fail(
                f"generators.{name}: kind must be one of {', '.join(KINDS)}, got {kind!r}",
                *at,
                "kind",
            )
        for key in table:
            if key not in _GENERATOR_KEYS[kind]:
                raise self.fail(
                    f"generators.{name}: unknown key {key!r} for kind {kind!r}; expected "
                    f"{', '.join(sorted(_GENERATOR_KEYS[kind]))}",
                    *at,
                    key,
                )
        for key in ("model", "base_url", "api_key_env"):
            if key in table and not (isinstance(table[key], str) and table[key].strip()):
                raise self.fail(f"generators.{name}: {key} must be a non-empty string", *at, key)
        if kind != "openai":
            return GeneratorSpec(name, kind, model=table.get("model"), local=True)
        for key in ("base_url", "model"):
            if key not in table:
                raise self.fail(f"generators.{name}: an openai generator needs {key}", *at)
        env = table.get("api_key_env")
        if env is not None and not _ENV_NAME.fullmatch(env):
            raise self.fail(
                f"generators.{name}: api_key_env names an environment variable (such as "
                "EXAMPLE_API_KEY), never the key itself",
                *at,
                "api_key_env",
            )
        local = table.get("local", False)
        if not isinstance(local, bool):
            raise self.fail(f"generators.{name}: local must be true or false", *at, "local")
        return GeneratorSpec(
            name,
            kind,
            model=table["model"],
            base_url=table["base_url"],
            api_key_env=env,
            local=local,
        )

    def rule(self, index: int, table: Any, generators: Mapping[str, GeneratorSpec]) -> Rule:
        at = ("rules", index)
        number = index + 1
        if not isinstance(table, dict):
            raise self.fail(f"rule {number} must be a table", *at)
        for key in table:
            if key not in _RULE_KEYS:
                raise self.fail(
                    f"rule {number}: unknown key {key!r}; expected {', '.join(sorted(_RULE_KEYS))}",
                    *at,
                    key,
                )
        local_only = table.get("local_only", False)
        if not isinstance(local_only, bool):
            raise self.fail(f"rule {number}: local_only must be true or false", *at, "local_only")
        name = table.get("generator")
        if name is None and not local_only:
            raise self.fail(f"rule {number}: generator = NAME is missing", *at)
        if name is not None:
            if not isinstance(name, str):
                raise self.fail(f"rule {number}: generator must be a name", *at, "generator")
            self.known(name, generators, *at, "generator")
            if local_only and not generators[name].local:
                raise self.fail(
                    f"rule {number} is local_only but its generator {name!r} is not local "
                    "(an openai endpoint is local only with local = true)",
                    *at,
                    "generator",
                )
        shown: list[str] = []
        where = None
        if "where" in table:
            raw = table["where"]
            if not isinstance(raw, str | dict):
                raise self.fail(
                    f"rule {number}: where must be a filter (a table or JSON text)", *at, "where"
                )
            try:
                where = parse(raw)
            except FilterError as e:
                raise self.fail(f"rule {number}: bad where filter: {e}", *at, "where") from e
            shown.append(f"where {raw if isinstance(raw, str) else _inline(raw)}")
        source = table.get("source")
        if source is not None:
            if not isinstance(source, str) or not source:
                raise self.fail(f"rule {number}: source must be a glob", *at, "source")
            shown.append(f"source {source}")
        values: dict[str, Any] = {}
        if "question" in table:
            raw = table["question"]
            if not isinstance(raw, str) or not raw:
                raise self.fail(
                    f"rule {number}: question must be a regular expression", *at, "question"
                )
            try:
                values["question"] = re.compile(raw)
            except re.error as e:
                raise self.fail(
                    f"rule {number}: bad question regular expression: {e}", *at, "question"
                ) from e
            shown.append(f"question ~ /{raw}/")
        for key in ("min_words", "max_words", "min_chars", "max_chars"):
            if key in table:
                v = table[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    unit = key.partition("_")[2]
                    raise self.fail(
                        f"rule {number}: {key} must be a whole number of {unit}", *at, key
                    )
                values[key] = v
                shown.append(f"{key} {v}")
        for key in ("below_score", "above_score"):
            if key in table:
                v = table[key]
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise self.fail(f"rule {number}: {key} must be a number", *at, key)
                values[key] = float(v)
                shown.append(f"{key} {v}")
        if local_only:
            shown.append("local_only")
        return Rule(
            number=number,
            line=self.lines.get(at, 0),
            generator=name,
            where=where,
            source=source,
            local_only=local_only,
            shown=tuple(shown),
            **values,
        )


def _inline(table: Mapping[str, Any]) -> str:
    import json

    return json.dumps(table, ensure_ascii=False, default=str)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r'^\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*=')


def _locate(text: str) -> dict[tuple[object, ...], int]:
    """Line numbers of the tables and keys of a routes file as it is usually written (one
    key a line): ``("generators", name[, key])``, ``("rules", index[, key])``,
    ``(key,)`` at the top level."""
    out: dict[tuple[object, ...], int] = {}
    table: tuple[object, ...] = ()
    rules = -1
    for n, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            brackets, name = header.groups()
            parts = [p.strip().strip("\"'") for p in name.split(".")]
            if brackets == "[[" and parts == ["rules"]:
                rules += 1
                table = ("rules", rules)
            elif len(parts) == 2 and parts[0] == "generators":
                table = ("generators", parts[1])
            else:
                table = tuple(parts)
            out.setdefault(table, n)
            continue
        key = _KEY.match(line)
        if key:
            out.setdefault((*table, key.group(1).strip("\"'")), n)
    return out
