"""Lazily built recipe components: nothing is instantiated until a stage asks for it.

Laziness matters at scale: a 10B generator must be built by the strategy on ``meta``, and a stage
that only evaluates should not pay for building what it does not use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from vilgkit.errors import ComponentArgumentError
from vilgkit.recipe import build


class ComponentStore(Mapping):
    """``key → component`` built on first access from the resolved recipe (cached afterwards).

    Args:
        recipe: the resolved recipe (plain dict with full class paths).
        on_built: callback ``(key, component)`` run after each build (the plugin hook).
        registered_only: the recipe came from a run directory: build registered classes only
            (see :func:`vilgkit.recipe.load_run_recipe`).
    """

    KEYS = ("data", "text_tokenizer", "image_tokenizer", "generator", "reconstructor", "strategy")

    def __init__(self, recipe: dict[str, Any], on_built=None, *, registered_only: bool = False) -> None:
        self._recipe = recipe
        self._registered_only = registered_only
        self._cache: dict[str, Any] = {}
        self._on_built = on_built

    def _present(self) -> list[str]:
        return [k for k in self.KEYS if self._recipe.get(k) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self._cache:
            self._cache[key] = self.build(key)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def __contains__(self, key: object) -> bool:
        return key in self._present() or key in self._cache

    def build(self, key: str) -> Any:
        """A *fresh* instance of component ``key`` (not cached); wrap in ``torch.device('meta')``
        to build without allocating."""
        node = self._recipe.get(key)
        if node is None:
            raise KeyError(f"the recipe defines no '{key}'")
        try:
            component = build(key, node, registered_only=self._registered_only)
        except ValueError as err:  # a constructor's own argument check: the user's recipe, not a bug
            where = node.get("class_path", "?") if isinstance(node, dict) else type(node).__name__
            raise ComponentArgumentError(f"recipe key '{key}' ({where}): {err}") from err
        if self._on_built is not None:
            self._on_built(key, component)
        return component

    def set(self, key: str, component: Any) -> None:
        """Replace a component (e.g. a tokenizer loaded from an earlier stage's output)."""
        self._cache[key] = component

    def forget(self, key: str) -> None:
        """Drop the cached instance of ``key``: the next access builds a fresh one from the recipe
        (after a stage whose strategy sharded the component in place; its weights are on disk)."""
        self._cache.pop(key, None)
