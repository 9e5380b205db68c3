"""Plugin discovery with pluggy: built-in and third-party plugins load the same way.

Every entry point of the group ``vilgkit`` names a module; importing it registers its components in
the registries (``vilgkit.registry``) and its hook implementations with the plugin manager.

* ``VILGKIT_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry points (register plugins by hand).
* ``VILGKIT_BLOCK_PLUGINS=name1,name2`` (or ``-p no:name`` in the CLI) skips plugins by entry-point name.
* Load order: core components (:mod:`vilgkit.builtins`), then vilgkit's own plugins, then the others
  by name — so a name a third-party plugin also registers stays with core or the built-in plugin.
* A plugin that fails to import — any exception, ``SystemExit`` included, or a name another
  component already holds — is contained: what it registered is rolled back, one line on stderr
  names it, ``vilgkit plugins`` lists it as failed, and the others keep working.
* Hooks are called through :func:`notify`: an implementation that raises is reported with its
  plugin's name and the run goes on.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType

import pluggy

from vilgkit import hookspecs
from vilgkit import registry as R

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

    def label(self) -> str:
        """``'name' (distribution version)`` for messages."""
        return f"{self.name!r} ({self.distribution} {self.version})".replace(" )", ")")


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
        import vilgkit.builtins  # noqa: F401  (core names first: a plugin cannot take them)

        for ep in sorted(metadata.entry_points(group=GROUP), key=_load_order):
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
            before = R.snapshot()
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as err:  # a broken plugin must not take the others down
                info.error = f"{type(err).__name__}: {err}"
                info.detail = traceback.format_exc()
                R.rollback(before)  # nothing half-registered stays usable
                print(
                    f"vilgkit: plugin {info.label()} failed to load ({info.error}); "
                    "it is disabled (details: vilgkit plugins --traceback)",
                    file=sys.stderr,
                )
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


def _load_order(ep: metadata.EntryPoint) -> tuple[int, str]:
    dist = getattr(ep, "dist", None)
    ours = dist is not None and dist.metadata["Name"] == "vilgkit"
    return (0 if ours else 1, ep.name)


def notify(hook: str, **kwargs) -> None:
    """Call every implementation of the notification hook ``hook`` with ``kwargs``.

    Each implementation runs on its own: one that raises (``SystemExit`` included) is reported on
    stderr with its plugin's name and the others — and the caller — carry on.
    """
    pm = get_plugin_manager()
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):  # pluggy's order: last registered first
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except (Exception, SystemExit) as err:
            print(
                f"vilgkit: plugin {impl.plugin_name!r}: hook {hook} failed ({type(err).__name__}: {err}); ignored",
                file=sys.stderr,
            )


def failed_plugins_note() -> str:
    """`` Plugins that failed to load: …`` (empty when none did), for "unknown class" messages."""
    manager = _MANAGER
    broken = manager.broken() if manager is not None else []
    if not broken:
        return ""
    names = "; ".join(f"{i.label()}: {i.error}" for i in broken)
    return f" Plugins that failed to load (their classes are missing): {names}."


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
