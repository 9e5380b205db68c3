"""One mmengine ``Registry`` per interface: the name index recipes and ``vilgkit plugins`` use.

Components register where they are defined (``@IMAGE_TOKENIZERS.register_module()``); the key is
the class name. Registering a second class under a taken name is an error that names both modules,
so two plugins can never silently shadow each other.
"""
from __future__ import annotations

import difflib
from typing import Any

from mmengine.registry import Registry


class VilgRegistry(Registry):
    """An mmengine ``Registry`` whose duplicate-name error names both modules.

    mmengine's own message names only the key; with plugins from several distributions, the
    useful answer is *which two modules* both claim the name.
    """

    def _register_module(self, module: Any, module_name=None, force: bool = False) -> None:
        names = [module_name] if isinstance(module_name, str) else (module_name or [module.__name__])
        for name in names:
            existing = self._module_dict.get(name)
            if existing is not None and existing is not module and not force:
                raise KeyError(
                    f"{self.name}: '{name}' is registered twice: by "
                    f"{existing.__module__}.{existing.__qualname__} and by "
                    f"{module.__module__}.{module.__qualname__}. Rename one of them."
                )
            if existing is module:  # re-import of the same class (e.g. importlib.reload) is harmless
                return
        super()._register_module(module, module_name=module_name, force=force)

    def names(self) -> list[str]:
        """Sorted short names registered here."""
        return sorted(self._module_dict)

    def closest(self, name: str) -> list[str]:
        """Registered names that look like ``name`` (for "did you mean" messages)."""
        lowered = {n.lower(): n for n in self._module_dict}
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


def find_class(name: str) -> tuple[str, type] | None:
    """Look a short name up in every registry; returns ``(registry name, class)`` or ``None``."""
    for reg_name, reg in ALL_REGISTRIES.items():
        cls = reg.get(name) if name in reg._module_dict else None
        if cls is not None:
            return reg_name, cls
    return None
