"""One registry for everything that plugs into ragkit, read from entry points.

ragkit's own stores, sources, generators, embedders and commands are declared in its
``pyproject.toml`` exactly as a third-party package declares its own::

    [project.entry-points."ragkit.stores"]
    mystore = "mypackage.store:MyStore [mystore]"

The optional ``[extra]`` names the package's extra that installs what the plugin needs;
the registry reads from the installed metadata whether that extra's requirements are
present, so listing plugins imports none of them and a missing driver is reported with its
install command (``pip install 'ragkit[qdrant]'``) before anything is imported.

Groups and what their entry points load:

============  =========================================================================
``stores``     a :class:`rag.store.VectorStore` class
``sources``    a :class:`rag.source.Source` class
``embedders``  a callable ``(EmbedderSpec) -> Embedder`` (:mod:`rag.embeddings`)
``generators`` a callable ``(GeneratorContext) -> Generator`` (:mod:`rag.generation`)
``commands``   a :class:`rag.commands.Command`
============  =========================================================================

Two packages declaring the same name in one group is an error that names both, raised
when that name is used (and shown by ``rag plugins``); nothing is dropped silently.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata as md
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rag.errors import MissingDependencyError, PluginConflictError, PluginError

GROUPS: dict[str, str] = {
    "stores": "ragkit.stores",
    "sources": "ragkit.sources",
    "embedders": "ragkit.embedders",
    "generators": "ragkit.generators",
    "commands": "ragkit.commands",
}
#: What one plugin of each group is called in messages.
KIND = {
    "stores": "store",
    "sources": "source",
    "embedders": "embedding backend",
    "generators": "generator",
    "commands": "command",
}
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


@dataclass(frozen=True, slots=True)
class Plugin:
    """One entry point: ``name = "module:attr [extra]"`` in ``group``, from ``package``."""

    group: str
    name: str
    target: str
    package: str
    extras: tuple[str, ...] = ()
    #: The distribution that declares it (its metadata says what each extra requires).
    dist: md.Distribution | None = field(default=None, compare=False, repr=False)

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def missing(self) -> list[str]:
        """Distributions the plugin's extras require that are not installed."""
        if not self.extras or self.dist is None:
            return []
        requires = _requirements(tuple(self.dist.requires or ()))
        own = _canonical(self.dist.metadata["Name"] or "")
        # An extra may name the package's own extras ("ragkit[onnx]"): those are followed.
        todo, seen, out = list(self.extras), set(), []
        while todo:
            extra = todo.pop(0)
            if extra in seen:
                continue
            seen.add(extra)
            for name, spec, extras in requires.get(extra, ()):
                if _canonical(name) == own:
                    todo.extend(extras)
                else:
                    out.extend(_missing([(name, spec)]))
        return out

    @property
    def installed(self) -> bool:
        return not self.missing()

    @property
    def install_hint(self) -> str | None:
        if self.installed:
            return None
        return f"pip install '{self.package}[{','.join(self.extras)}]'"

    def summary(self) -> str:
        """One line about the plugin, read from its module's source without importing it
        (so that listing plugins imports no driver): the object's ``description`` or
        ``help`` string, else the first line of its docstring."""
        return _summary(self.module, self.target.partition(":")[2])

    def load(self) -> Any:
        """The object the entry point names, importing its module now; a missing extra is a
        :class:`MissingDependencyError` with the install command."""
        missing = self.missing()
        if missing:
            raise MissingDependencyError(
                f"the {self.name} {KIND[self.group]}",
                missing[0],
                ",".join(self.extras),
                dist=self.package,
            )
        module_name, _, attr = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
        except ImportError as e:
            raise PluginError(
                f"the {self.name} {KIND[self.group]} from {self.package} cannot be imported "
                f"({self.target}): {e}"
            ) from e
        except AttributeError as e:
            raise PluginError(
                f"the {self.name} {KIND[self.group]} from {self.package} names {self.target}, "
                "which does not exist"
            ) from e
        return obj


@dataclass(frozen=True, slots=True)
class Clash:
    """One name declared by more than one package in a group."""

    group: str
    name: str
    plugins: tuple[Plugin, ...]

    def error(self) -> PluginConflictError:
        where = " and ".join(f"{p.package} ({p.target})" for p in self.plugins)
        return PluginConflictError(
            f"the {KIND[self.group]} name {self.name!r} is declared by {where}; "
            "uninstall one of these packages"
        )


class Registry:
    """Every plugin of every group, read once from the installed distributions."""

    def __init__(self, entry_points: md.EntryPoints | None = None) -> None:
        eps = md.entry_points() if entry_points is None else entry_points
        self._plugins: dict[str, dict[str, Plugin]] = {g: {} for g in GROUPS}
        self._clashes: dict[str, dict[str, Clash]] = {g: {} for g in GROUPS}
        for group, ep_group in GROUPS.items():
            seen: dict[str, list[Plugin]] = {}
            for ep in eps.select(group=ep_group):
                plugin = Plugin(
                    group,
                    ep.name,
                    ep.value.split("[", 1)[0].strip(),
                    _dist_name(ep.dist),
                    tuple(ep.extras),
                    ep.dist,
                )
                same = seen.setdefault(ep.name, [])
                if all(p.package != plugin.package for p in same):
                    same.append(plugin)
            for name, found in sorted(seen.items()):
                if len(found) == 1:
                    self._plugins[group][name] = found[0]
                else:
                    self._clashes[group][name] = Clash(group, name, tuple(found))

    def names(self, group: str) -> list[str]:
        """The usable names of ``group``, sorted (clashing names left out)."""
        return sorted(self._plugins[_check_group(group)])

    def plugins(self, group: str) -> dict[str, Plugin]:
        return dict(sorted(self._plugins[_check_group(group)].items()))

    def clashes(self, group: str) -> list[Clash]:
        return list(self._clashes[_check_group(group)].values())

    def get(self, group: str, name: str) -> Plugin:
        """The plugin ``name`` of ``group``; an unknown or clashing name is an error."""
        group = _check_group(group)
        if name in self._clashes[group]:
            raise self._clashes[group][name].error()
        try:
            return self._plugins[group][name]
        except KeyError:
            known = ", ".join(self.names(group)) or "none"
            raise PluginError(f"unknown {KIND[group]} {name!r}; known: {known}") from None

    def load(self, group: str, name: str) -> Any:
        return self.get(group, name).load()


_REGISTRY: Registry | None = None
_LOCK = threading.Lock()


def registry() -> Registry:
    """The process's registry (read on first use; :func:`refresh` after installing)."""
    global _REGISTRY
    with _LOCK:
        if _REGISTRY is None:
            _REGISTRY = Registry()
        return _REGISTRY


def refresh() -> None:
    """Forget what was read, so that plugins installed since are found."""
    global _REGISTRY
    with _LOCK:
        _REGISTRY = None
    _requirements.cache_clear()


def names(group: str) -> list[str]:
    return registry().names(group)


def get(group: str, name: str) -> Plugin:
    return registry().get(group, name)


def load(group: str, name: str) -> Any:
    return registry().load(group, name)


def _dist_name(dist: md.Distribution | None) -> str:
    """The distribution's name, from its folder name where it has one (reading the
    metadata file of every distribution would slow ``rag --help`` down)."""
    if dist is None:
        return "an unknown package"
    name = getattr(dist, "_normalized_name", None)
    return name if isinstance(name, str) and name else dist.name


def _check_group(group: str) -> str:
    if group not in GROUPS:
        raise PluginError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")
    return group


# --- summaries, read from source ------------------------------------------------------------


@functools.cache
def _summary(module: str, attr: str) -> str:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
        if not origin or not origin.endswith(".py"):
            return ""
        with open(origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (ImportError, OSError, SyntaxError, ValueError):
        return ""
    name = attr.split(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            for item in node.body if isinstance(node, ast.ClassDef) else ():
                text = _assigned_string(item, "description")
                if text:
                    return text
            return (ast.get_docstring(node) or "").strip().split("\n")[0]
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            call = node.value
            if isinstance(call, ast.Call):
                for kw in call.keywords:
                    if kw.arg in ("help", "description") and isinstance(kw.value, ast.Constant):
                        return str(kw.value.value)
    return ""


def _assigned_string(node: ast.stmt, name: str) -> str:
    target = None
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target, value = node.target, node.value
    if isinstance(target, ast.Name) and target.id == name:
        try:
            text = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            return ""
        return text if isinstance(text, str) else ""
    return ""


# --- extras: which requirements are installed, from metadata alone ---------------------------


def _missing(requirements: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for name, spec in requirements:
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            out.append(name)
            continue
        if spec and not _satisfies(have, spec):
            out.append(f"{name}{spec} (found {have})")
    return out


@functools.cache
def _requirements(requires: tuple[str, ...]) -> dict[str, list[tuple[str, str, list[str]]]]:
    """``{extra: [(distribution, specifier, its extras), ...]}`` from a distribution's
    requirements."""
    from packaging.requirements import InvalidRequirement, Requirement

    out: dict[str, list[tuple[str, str, list[str]]]] = {}
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None:
            continue
        for extra in _EXTRA_MARKER.findall(str(req.marker)):
            if req.marker.evaluate({"extra": extra}):
                out.setdefault(extra, []).append((req.name, str(req.specifier), sorted(req.extras)))
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _satisfies(version: str, spec: str) -> bool:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return SpecifierSet(spec).contains(version, prereleases=True)
    except InvalidSpecifier:
        return True
