"""``vilgkit plugins``: every registered component per registry, its plugin, and broken plugins."""

from __future__ import annotations

import argparse
import sys

HELP = "list registered components per registry and the plugin each comes from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--traceback", action="store_true", help="full tracebacks of broken plugins")


def _owner(module: str, infos) -> str:
    for info in infos:
        if module == info.module or module.startswith(info.module + "."):
            return f"{info.name} ({info.distribution} {info.version})".strip()
    return "vilgkit core" if module.startswith("vilgkit.") or module == "vilgkit" else module


def main(args: argparse.Namespace) -> int:
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import ALL_REGISTRIES

    pm = get_plugin_manager()
    _import_core_components()
    infos = list(pm.infos.values())
    for reg_name, reg in ALL_REGISTRIES.items():
        print(f"{reg_name}:")
        if not reg.names():
            print("  (none)")
        for name in reg.names():
            cls = reg.get(name)
            print(f"  {name:<28} {_owner(cls.__module__, infos)}")
    broken = pm.broken()
    if broken:
        print("broken plugins:")
        for info in broken:
            print(f"  {info.name} ({info.distribution} {info.version}, module {info.module}): {info.error}")
            if args.traceback and info.detail:
                print(info.detail, file=sys.stderr)
    return 0


def _import_core_components() -> None:
    """Core registers its own components (data sets, generator, metrics, stages) on import."""
    from vilgkit import builtins  # noqa: F401
