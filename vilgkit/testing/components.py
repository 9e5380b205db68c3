"""Enumerate registered components and build them for tests."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from vilgkit import registry as R
from vilgkit.plugins import get_plugin_manager


@dataclass(frozen=True)
class ComponentCase:
    """One registered component: its registry, short name and class."""

    registry: str
    name: str
    cls: type

    @property
    def id(self) -> str:
        return f"{self.registry}:{self.name}"


def registered_components(registry: str | None = None, plugin: str | None = None) -> list[ComponentCase]:
    """Every registered class (after loading plugins and core components), optionally filtered.

    Args:
        registry: only this registry (e.g. ``"image_tokenizer"``).
        plugin: only classes whose module belongs to this plugin (entry-point name).
    """
    pm = get_plugin_manager()
    import vilgkit.builtins  # noqa: F401

    module_prefix = None
    if plugin is not None:
        info = pm.infos.get(plugin)
        module_prefix = info.module if info is not None else plugin
    cases = []
    for reg_name, reg in R.ALL_REGISTRIES.items():
        if registry is not None and reg_name != registry:
            continue
        for name in reg.names():
            cls = reg.get(name)
            if module_prefix and not (
                cls.__module__ == module_prefix or cls.__module__.startswith(module_prefix + ".")
            ):
                continue
            cases.append(ComponentCase(reg_name, name, cls))
    return cases


def conformance_kwargs(cls: type) -> dict[str, Any]:
    """Tiny constructor kwargs: ``cls.conformance_args()`` when defined, the fixture folder for the
    built-in file readers (:mod:`vilgkit.testing.fixtures`), else no arguments."""
    hook = getattr(cls, "conformance_args", None)
    if callable(hook):
        return dict(hook())
    from vilgkit.testing.fixtures import fixture_args

    return fixture_args(cls) or {}


def build_component(cls: type) -> Any:
    """Instantiate ``cls`` for conformance tests, with a helpful error when it cannot be."""
    kwargs = conformance_kwargs(cls)
    try:
        return cls(**kwargs)
    except TypeError as err:
        required = [
            n
            for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        raise TypeError(
            f"{cls.__name__} cannot be built for conformance tests ({err}); required arguments "
            f"{required}: define a classmethod conformance_args() returning tiny values"
        ) from err
