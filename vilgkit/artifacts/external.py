"""The files a recipe names outside the run: the constructor arguments a component class lists in
its ``EXTERNAL_FILES`` (and the files it finds by itself), found without importing anything."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from vilgkit.artifacts.layout import EXTERNAL_FILES_ATTR


def external_args(recipe: Any, prefix: str = "") -> Iterator[tuple[str, dict[str, Any], str]]:
    """``(dotted key, node, argument)`` for every file argument a component class declares."""
    if isinstance(recipe, list):
        for i, value in enumerate(recipe):
            yield from external_args(value, f"{prefix}{i}.")
        return
    if not isinstance(recipe, dict):
        return
    if isinstance(recipe.get("class_path"), str) and isinstance(recipe.get("init_args"), dict):
        names = _declared_external_files(recipe["class_path"])
        implied = _implied_external_files(recipe["class_path"], recipe["init_args"])
        for arg, value in implied.items():  # files the component finds by itself (a config next to a checkpoint)
            if recipe["init_args"].get(arg) is None:
                recipe["init_args"][arg] = value
        for arg in names:
            if isinstance(recipe["init_args"].get(arg), str) and recipe["init_args"][arg]:
                yield f"{prefix}init_args.{arg}", recipe, arg
    for key, value in recipe.items():
        yield from external_args(value, f"{prefix}{key}.")


def _declared_external_files(class_path: str) -> tuple[str, ...]:
    """The class's ``EXTERNAL_FILES``; only classes already imported are asked (a resolved recipe's
    are): reading a recipe never imports a module."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return tuple(getattr(cls, EXTERNAL_FILES_ATTR, ()) or ())


def _implied_external_files(class_path: str, init_args: dict[str, Any]) -> dict[str, str]:
    """Files a component would find by itself when an argument is left out (its classmethod
    ``implied_files(init_args)``), so they are copied into the run with the ones named."""
    module, _, name = class_path.rpartition(".")
    implied = getattr(getattr(sys.modules.get(module), name, None), "implied_files", None)
    return dict(implied(dict(init_args))) if callable(implied) else {}


def dotted_parent(tree: Any, key: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping holding dotted ``key`` (list indices as numbers) and the last part, or ``(None, _)``."""
    *parts, leaf = key.split(".")
    node = tree
    for part in parts:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None, leaf
    return (node, leaf) if isinstance(node, dict) else (None, leaf)
