"""One mmengine ``Registry`` per interface: the name index recipes and ``vilgkit plugins`` use.

Components register where they are defined (``@IMAGE_TOKENIZERS.register_module()``); the key is
the class name. A name is owned by whoever registered it first — core and the built-in plugins load
before third-party plugins — and a second class under a taken name is refused with an error naming
both, so a plugin can never silently shadow (or knock out) another one's component.
"""

from __future__ import annotations

import difflib
from typing import Any

from mmengine.registry import Registry

from vilgkit.errors import VilgkitError


class DuplicateComponentError(VilgkitError, KeyError):
    """A class registered under a name another class already holds (also a ``KeyError``, as mmengine's own)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def _qualified(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


class VilgRegistry(Registry):
    """An mmengine ``Registry`` (used through its public API) that refuses a taken name, naming both classes.

    mmengine's own message names only the key; with plugins from several distributions, the
    useful answer is *which two classes* claim the name, and which one keeps it.
    """

    def register_module(self, name: str | list[str] | None = None, force: bool = False, module: Any = None):
        """Register ``module`` (or, without it, return a class decorator), refusing a taken name."""
        if module is None:

            def decorate(cls: Any) -> Any:
                self.register_module(name=name, force=force, module=cls)
                return cls

            return decorate
        names = [name] if isinstance(name, str) else (name or [module.__name__])
        existing = [self.module_dict.get(n) for n in names]
        if all(e is module for e in existing):  # re-import of the same class (importlib.reload): harmless
            return module
        for key, old in zip(names, existing):
            if old is not None and old is not module and not force:
                raise DuplicateComponentError(
                    f"{self.name}: '{key}' is already registered by {_qualified(old)} (kept); "
                    f"{_qualified(module)} is refused. Rename one of them."
                )
        return super().register_module(name=name, force=force, module=module)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (the registrations of a plugin that failed half-way through its import)."""
        self.module_dict.pop(name, None)

    def names(self) -> list[str]:
        """Sorted short names registered here."""
        return sorted(self.module_dict)

    def closest(self, name: str) -> list[str]:
        """Registered names that look like ``name`` (for "did you mean" messages)."""
        lowered = {n.lower(): n for n in self.module_dict}
        hits = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        return [lowered[h] for h in hits]


IMAGE_TOKENIZERS = VilgRegistry("image_tokenizer")
TEXT_TOKENIZERS = VilgRegistry("text_tokenizer")
GENERATORS = VilgRegistry("generator")
RECONSTRUCTORS = VilgRegistry("reconstructor")
ATTENTION_PATTERNS = VilgRegistry("attention_pattern")
PARALLEL_STRATEGIES = VilgRegistry("parallel_strategy")
DATASETS = VilgRegistry("dataset")
RERANKERS = VilgRegistry("reranker")
METRICS = VilgRegistry("metric")
STAGES = VilgRegistry("stage")

ALL_REGISTRIES: dict[str, VilgRegistry] = {
    r.name: r
    for r in (
        IMAGE_TOKENIZERS,
        TEXT_TOKENIZERS,
        GENERATORS,
        RECONSTRUCTORS,
        ATTENTION_PATTERNS,
        PARALLEL_STRATEGIES,
        DATASETS,
        RERANKERS,
        METRICS,
        STAGES,
    )
}


def snapshot() -> dict[str, set[str]]:
    """Every registry's names now (to undo what a failed plugin registered before it failed)."""
    return {reg_name: set(reg.module_dict) for reg_name, reg in ALL_REGISTRIES.items()}


def rollback(before: dict[str, set[str]]) -> list[str]:
    """Unregister every name added since ``before``; returns them as ``registry:name``."""
    removed = []
    for reg_name, reg in ALL_REGISTRIES.items():
        for name in set(reg.module_dict) - before.get(reg_name, set()):
            reg.unregister(name)
            removed.append(f"{reg_name}:{name}")
    return sorted(removed)
