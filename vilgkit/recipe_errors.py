"""Recipe validation errors as one line: the dotted key *with its list index*, what is allowed, a suggestion.

jsonargparse reports nested problems by parser keys only (``stages`` → ``trainer`` → ``steps``): no
list index, Python type reprs (``Expected a <class 'int'>``) and no "did you mean". This module
finds the offending key in the recipe itself and says the rest in words; :func:`blame_override`
names the command-line override instead of the recipe file when the bad value came from there.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
from typing import Any

from vilgkit.errors import RecipeError

_TYPE_WORDS = {
    "<class 'int'>": "an integer",
    "<class 'float'>": "a number",
    "<class 'str'>": "a string",
    "<class 'bool'>": "true or false",
    "<class 'NoneType'>": "null",
}


def describe_validation_error(message: str, recipe: dict[str, Any]) -> tuple[str, str]:
    """``(dotted key, what is wrong and what is allowed)`` for a jsonargparse error ``message``."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    option = re.search(r"Option '([^']+)' is not accepted", message)
    expected = re.search(r"Expected an? (.+?)\. Got value: (.*)", message)
    classes = re.findall(r"Problem with given class_path '([^']+)'", message)
    name = option.group(1) if option else (keys[-1] if keys else None)
    got = expected.group(2).strip() if expected else None
    top = keys[0] if keys else None
    found = _find(recipe.get(top), name, got, top) if top in recipe and name else None
    dotted = found or ".".join(keys) or "?"
    if option:
        accepted = _accepted(classes[-1]) if classes else []
        close = difflib.get_close_matches(option.group(1), accepted, n=1)
        owner = classes[-1].rpartition(".")[2] if classes else "this class"
        hint = f" Did you mean {close[0]}?" if close else ""
        listed = f" It takes: {', '.join(accepted)}." if accepted else ""
        return dotted, f"{owner} does not take '{option.group(1)}'.{listed}{hint}"
    if expected:
        return dotted, f"expected {_words(expected.group(1))}, got {got}"
    lines = [line.strip() for line in message.splitlines() if line.strip() and "Parser key" not in line]
    return dotted, lines[-1] if lines else message


def blame_override(err: RecipeError, source: str, overrides: list[str]) -> RecipeError:
    """``err`` re-worded to name the command-line override that set its key (``--a.b VALUE``), if one did."""
    key = getattr(err, "key", None)
    if not key:
        return err
    for flag, value in _override_pairs(overrides):
        if key == flag or key.startswith(flag + ".") or flag.startswith(key + "."):
            text = str(err)
            rest = text[len(source) + 2 :] if text.startswith(f"{source}: ") else text
            return RecipeError(f"command-line override --{flag} {value}: {rest}", key=key)
    return err


def _override_pairs(overrides: list[str]) -> list[tuple[str, str]]:
    pairs, items = [], list(overrides)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--"):
            continue
        if "=" in flag:
            pairs.append(tuple(flag[2:].split("=", 1)))
        elif items:
            pairs.append((flag[2:], items.pop(0)))
    return pairs


def _words(expected: str) -> str:
    if expected in _TYPE_WORDS:
        return _TYPE_WORDS[expected]
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", expected)
    if literal:
        return f"one of {literal.group(1)}"
    return expected


def _matches(value: Any, got: str | None) -> bool:
    if got is None:
        return True
    if isinstance(value, list):
        return str(value) == got or any(str(v) == got for v in value)
    return str(value) == got


def _find(node: Any, name: str, got: str | None, path: str) -> str | None:
    """Dotted path (with list indices) of the first key ``name`` under ``node`` whose value reads ``got``."""
    if isinstance(node, dict):
        if name in node and _matches(node[name], got):
            return f"{path}.{name}"
        children = node.items()
    elif isinstance(node, list):
        children = ((str(i), v) for i, v in enumerate(node))
    else:
        return path if path.rpartition(".")[2] == name and _matches(node, got) else None
    for key, child in children:
        hit = _find(child, name, got, f"{path}.{key}")
        if hit:
            return hit
    return None


def _accepted(class_path: str) -> list[str]:
    """Argument names the class at ``class_path`` takes (dataclass fields or constructor parameters)."""
    module_name, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
