"""Plugin discovery with pluggy: built-in and third-party plugins load the same way.

Every entry point of the group ``vilgkit`` names a module; importing it registers its components in
the registries (``vilgkit.registry``) and its hook implementations with the plugin manager.

* ``VILGKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry points (register plugins by hand).
* ``VILGKIT_BLOCK_PLUGINS=name1,name2`` (or ``-p no:name`` in the CLI) skips plugins by entry-point name.
* A plugin that fails to import is recorded with its name, distribution and exception; the others
  keep working, and ``vilgkit plugins`` reports it.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

import pluggy

from vilgkit import hookspecs

GROUP = "vilgkit"


@dataclass
class PluginInfo:
    """One discovered plugin: entry-point name, module, distribution and (if broken) its error."""

    name: str
    module: str
    distribution: str
    version: str
    error: str | None = None
    detail: str | None = None


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus a record of what loaded, what was blocked and what broke."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.blocked: set[str] = set()
        self._loaded_entrypoints = False

    def load_entrypoints(self, blocked: set[str] | None = None) -> None:
        """Import every ``vilgkit`` entry point not blocked; record failures instead of raising."""
        if self._loaded_entrypoints:
            return
        self._loaded_entrypoints = True
        self.blocked |= blocked or set()
        for ep in metadata.entry_points(group=GROUP):
            if ep.name in self.blocked or self.is_blocked(ep.name) or ep.name in self.infos:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else "?",
                version=dist.version if dist is not None else "?",
            )
            self.infos[ep.name] = info
            try:
                plugin = ep.load()
            except Exception as err:  # a broken plugin must not take the others down
                info.error = f"{type(err).__name__}: {err}"
                info.detail = traceback.format_exc()
                continue
            self.register_plugin(plugin, ep.name)

    def register_plugin(self, plugin: ModuleType | object, name: str) -> None:
        """Register an already-imported plugin object under ``name``."""
        if self.get_plugin(name) is None and not self.is_blocked(name):
            self.register(plugin, name=name)
        if name not in self.infos:
            module = getattr(plugin, "__name__", type(plugin).__name__)
            self.infos[name] = PluginInfo(name, module, "(registered in code)", "")

    def broken(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]

    def versions(self) -> dict[str, str]:
        """``plugin name → "distribution version"`` for the resolved recipe."""
        return {n: f"{i.distribution} {i.version}".strip() for n, i in self.infos.items() if not i.error}


_MANAGER: PluginManager | None = None


def get_plugin_manager(load: bool = True) -> PluginManager:
    """The process-wide plugin manager; loads entry points once unless autoload is disabled."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
        blocked = {b.strip() for b in os.environ.get("VILGKIT_BLOCK_PLUGINS", "").split(",") if b.strip()}
        for name in blocked:
            _MANAGER.set_blocked(name)
    if load and os.environ.get("VILGKIT_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes"):
        _MANAGER.load_entrypoints()
    return _MANAGER


def reset_plugin_manager() -> None:
    """Forget the manager (tests); registries keep what was registered."""
    global _MANAGER
    _MANAGER = None
