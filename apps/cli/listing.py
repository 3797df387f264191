"""``rag stores`` and ``rag plugins``: what is registered, and whether it is installed.

Both read the registry and the plugins' sources; neither imports a plugin's module, so
neither imports a database driver or a model runtime.
"""

from __future__ import annotations

import argparse

from rag import plugins as registry
from rag.commands import Command, add_json_option, emit, wants_json


def _row(p: registry.Plugin) -> dict:
    missing = p.missing()
    return {
        "name": p.name,
        "group": p.group,
        "package": p.package,
        "target": p.target,
        "installed": not missing,
        "missing": missing,
        "install": p.install_hint,
        "description": p.summary(),
    }


# --- rag stores --------------------------------------------------------------------------------


def _configure_stores(p: argparse.ArgumentParser) -> None:
    add_json_option(p)


def _run_stores(args: argparse.Namespace) -> int:
    reg = registry.registry()
    rows = [_row(p) for p in reg.plugins("stores").values()]
    clashes = [str(c.error()) for c in reg.clashes("stores")]
    if wants_json(args):
        emit({"stores": rows, "clashes": clashes})
        return 0
    for r in rows:
        state = "installed" if r["installed"] else f"missing: {r['install']}"
        print(f"{r['name']:<10} {state:<12} {r['description']}")
    for c in clashes:
        print(f"error: {c}")
    return 1 if clashes else 0


stores = Command(
    help="list vector store backends and whether they are installed",
    configure=_configure_stores,
    run=_run_stores,
)


# --- rag plugins -------------------------------------------------------------------------------


def _configure_plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "group",
        nargs="?",
        choices=list(registry.GROUPS),
        help="only this group (default: all)",
    )
    add_json_option(p)


def _run_plugins(args: argparse.Namespace) -> int:
    reg = registry.registry()
    groups = [args.group] if args.group else list(registry.GROUPS)
    out = {
        g: {
            "entry_points": registry.GROUPS[g],
            "plugins": [_row(p) for p in reg.plugins(g).values()],
            "clashes": [str(c.error()) for c in reg.clashes(g)],
        }
        for g in groups
    }
    if wants_json(args):
        emit(out)
    else:
        for g, info in out.items():
            print(f"{g} ({info['entry_points']})")
            for r in info["plugins"]:
                state = "" if r["installed"] else f"  [missing: {r['install']}]"
                print(f"  {r['name']:<12} {r['package']:<10} {r['description']}{state}")
            for c in info["clashes"]:
                print(f"  error: {c}")
    return 1 if any(info["clashes"] for info in out.values()) else 0


plugins = Command(
    help="list every plugin group, with each plugin's package and state",
    configure=_configure_plugins,
    run=_run_plugins,
)
