"""Recipes: YAML parsed and validated by jsonargparse against the components' constructors.

A recipe is a mapping with these keys (all optional except ``stages``)::

    run_dir: runs/shapes_tiny          # where outputs go
    seed: 0
    data:            {class_path: ShapesDataset,    init_args: {...}}
    text_tokenizer:  {class_path: WordPieceTokenizer, init_args: {...}}
    image_tokenizer: {class_path: VQVAETokenizer,   init_args: {...}}
    generator:       {class_path: UnifiedTransformer, init_args: {..., attention: {class_path: DenseAttention}}}
    reconstructor:   {class_path: TwoStageReconstructor}
    strategy:        {class_path: SingleDevice}
    stages:
      - {class_path: TrainTokenizer, init_args: {steps: 300}}

``class_path`` is a registry short name or a dotted import path. Several files merge in order
(later wins; a changed ``class_path`` drops the earlier ``init_args``), then dotted command-line
overrides apply (``--generator.init_args.num_layers 2``). Derived values are linked (see ``LINKS``).
"""
from __future__ import annotations

import copy
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from torch.utils.data import Dataset

from vilgkit import registry as R
from vilgkit.errors import RecipeError
from vilgkit.recipe_errors import blame_override, describe_validation_error
from vilgkit.interfaces import (
    Generator,
    ImageTokenizer,
    ParallelStrategy,
    Reconstructor,
    Stage,
    TextTokenizer,
)

#: top-level component keys: base class and the registry whose short names they accept
COMPONENTS: dict[str, tuple[type, R.VilgRegistry]] = {
    "data": (Dataset, R.DATASETS),
    "text_tokenizer": (TextTokenizer, R.TEXT_TOKENIZERS),
    "image_tokenizer": (ImageTokenizer, R.IMAGE_TOKENIZERS),
    "generator": (Generator, R.GENERATORS),
    "reconstructor": (Reconstructor, R.RECONSTRUCTORS),
    "strategy": (ParallelStrategy, R.PARALLEL_STRATEGIES),
}

#: nested argument names whose ``class_path`` is looked up in a specific registry
NESTED_REGISTRIES: dict[str, R.VilgRegistry] = {
    "attention": R.ATTENTION_PATTERNS,
    "reranker": R.RERANKERS,
    "metrics": R.METRICS,
    "metric": R.METRICS,
    "data": R.DATASETS,
    "eval_data": R.DATASETS,
    "stages": R.STAGES,
    **{k: reg for k, (_, reg) in COMPONENTS.items()},
}

#: derived values: (source key, target key); the target is computed, never given by hand
LINKS: list[tuple[str, str]] = [
    ("image_tokenizer.init_args.codebook_size", "generator.init_args.image_vocab_size"),
    ("text_tokenizer.init_args.vocab_size", "generator.init_args.text_vocab_size"),
]

SCALAR_KEYS = {"run_dir": (str, "runs/run"), "seed": (int, 0), "name": (str, "run")}


def build_parser() -> ArgumentParser:
    """The jsonargparse parser of the recipe schema (components + stages + scalars)."""
    parser = ArgumentParser(prog="vilgkit", exit_on_error=False, default_env=False)
    for key, (typ, default) in SCALAR_KEYS.items():
        parser.add_argument(f"--{key}", type=typ, default=default)
    for key, (base, _) in COMPONENTS.items():
        parser.add_subclass_arguments(base, key, required=False, instantiate=False)
    parser.add_argument("--stages", type=list[Stage], default=[])
    for source, target in LINKS:
        try:
            parser.link_arguments(source, target)
        except Exception:  # a link whose classes are not known yet is resolved at parse time
            pass
    return parser


# --------------------------------------------------------------------------- loading


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one recipe file; a missing file or malformed YAML is a one-line ``RecipeError``."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not a YAML text file (byte {err.start} is not UTF-8)") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise RecipeError(f"{path}: malformed YAML at {where}: {err.problem}") from None
    except yaml.YAMLError as err:  # e.g. control characters: not text
        raise RecipeError(f"{path}: not a YAML text file ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; a changed ``class_path`` drops old ``init_args``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if "class_path" in value and old.get("class_path") not in (None, value["class_path"]):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--a.b.c VALUE`` / ``--a.b.c=VALUE`` pairs (values parsed as YAML)."""
    out = copy.deepcopy(recipe)
    items = list(overrides)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--"):
            raise RecipeError(f"unexpected argument {flag!r}: overrides look like --generator.init_args.num_layers 2")
        if "=" in flag:
            key, raw = flag[2:].split("=", 1)
        else:
            if not items:
                raise RecipeError(f"override {flag} has no value")
            key, raw = flag[2:], items.pop(0)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise RecipeError(f"override --{key}: {raw!r} is not a YAML value (quote a string)", key=key) from None
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if isinstance(node, list):
                _check_index(node, part, key, ".".join(parts[:depth]))
            if depth == len(parts) - 1:
                break
            if isinstance(node, list):
                node = node[int(part)]
                continue
            nxt = node.get(part)
            if not isinstance(nxt, (dict, list)):
                nxt = {}
                node[part] = nxt
            node = nxt
        if isinstance(node, list) and parts[-1].isdigit():
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return out


def _check_index(items: list[Any], part: str, key: str, where: str) -> None:
    """An override into a list names an existing index (``--stages.9…`` with 4 stages is an error)."""
    if part.isdigit() and int(part) < len(items):
        return
    indices = f"0..{len(items) - 1}" if items else "none, it is empty"
    raise RecipeError(
        f"override --{key}: {where} is a list of {len(items)}; {part!r} is not one of its indices ({indices})",
        key=where,
    )


# --------------------------------------------------------------------------- class paths


def resolve_class_paths(node: Any, source: str, key: str = "") -> Any:
    """Replace registry short names by dotted paths everywhere in the tree; errors name the key."""
    if isinstance(node, list):
        return [resolve_class_paths(v, source, f"{key}.{i}" if key else str(i)) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        child_key = f"{key}.{k}" if key else k
        out[k] = resolve_class_paths(v, source, child_key)
    if "class_path" in out:
        out["class_path"] = _resolve_one(str(out["class_path"]), source, f"{key}.class_path" if key else "class_path", key)
        _check_init_args(out, source, key)
    return out


def _registry_for(key: str) -> R.VilgRegistry | None:
    parts = [p for p in key.split(".") if not p.isdigit() and p != "init_args"]
    return NESTED_REGISTRIES.get(parts[-1]) if parts else None


def _resolve_one(name: str, source: str, dotted: str, owner_key: str) -> str:
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
            getattr(module, attr)
        except (ImportError, AttributeError) as err:
            raise RecipeError(f"{source}: {dotted}: cannot import {name!r} ({err})") from None
        return name
    hit = R.find_class(name)
    if hit is not None:
        cls = hit[1]
        return f"{cls.__module__}.{cls.__qualname__}"
    registry = _registry_for(owner_key)
    choices = registry.names() if registry is not None else sorted(
        n for reg in R.ALL_REGISTRIES.values() for n in reg.names()
    )
    close = registry.closest(name) if registry is not None else []
    if not close:
        import difflib

        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]}?" if close else ""
    where = f" in registry '{registry.name}'" if registry is not None else ""
    from vilgkit.plugins import failed_plugins_note

    raise RecipeError(
        f"{source}: {dotted}: unknown class_path {name!r}{where}. Available: "
        f"{', '.join(choices) or '(none registered)'}.{hint}{failed_plugins_note()}",
        key=dotted,
    )


def _check_init_args(node: dict[str, Any], source: str, key: str) -> None:
    """Name the exact dotted key of an ``init_args`` entry the class does not accept."""
    init_args = node.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise RecipeError(f"{source}: {key}.init_args must be a mapping")
    module_name, _, attr = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n != "self"]
    for arg in init_args:
        if arg not in accepted:
            import difflib

            close = difflib.get_close_matches(arg, accepted, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            prefix = f"{key}.init_args" if key else "init_args"
            raise RecipeError(
                f"{source}: {prefix}.{arg}: {cls.__name__} does not take '{arg}'. "
                f"It takes: {', '.join(accepted) or '(nothing)'}.{hint}",
                key=f"{prefix}.{arg}",
            )


# --------------------------------------------------------------------------- parsing


def parse_recipe(paths: list[str | Path], overrides: list[str] | None = None) -> Namespace:
    """Load, merge, override, resolve and validate a recipe; returns the jsonargparse namespace."""
    if not paths:
        raise RecipeError("no recipe given")
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge(merged, load_yaml(path))
    merged = apply_overrides(merged, overrides or [])
    source = ", ".join(str(p) for p in paths)
    try:
        return _validate(merged, source)
    except RecipeError as err:
        raise blame_override(err, source, overrides or []) from None


def _validate(merged: dict[str, Any], source: str) -> Namespace:
    known = set(SCALAR_KEYS) | set(COMPONENTS) | {"stages"}
    for key in merged:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise RecipeError(
                f"{source}: unknown top-level key '{key}'. Recipe keys: {', '.join(sorted(known))}.{hint}", key=key
            )
    merged = resolve_class_paths(merged, source)
    parser = build_parser()
    try:
        return parser.parse_object(merged)
    except Exception as err:  # jsonargparse.ArgumentError and friends
        key, problem = describe_validation_error(str(err), merged)
        raise RecipeError(f"{source}: {key}: {problem}", key=key) from None


def to_dict(cfg: Namespace) -> dict[str, Any]:
    """The resolved recipe as plain data (full class paths, defaults filled in, links applied)."""
    return cfg.as_dict()


# --------------------------------------------------------------------------- instantiation


def instantiate(node: Any) -> Any:
    """Build objects from a resolved ``{class_path, init_args}`` tree (nested ones first)."""
    if isinstance(node, Namespace):
        node = node.as_dict()
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if isinstance(node, dict):
        if "class_path" in node:
            module_name, _, attr = node["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module_name), attr)
            kwargs = {k: instantiate(v) for k, v in (node.get("init_args") or {}).items()}
            return cls(**_dataclass_kwargs(cls, kwargs))
        return {k: instantiate(v) for k, v in node.items()}
    return node


def _dataclass_kwargs(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn plain dicts into the dataclasses the constructor's type hints ask for.

    jsonargparse validates a dataclass-typed argument but ``as_dict()`` hands it back as a dict;
    the component should receive the object its signature promises (e.g. ``TrainerConfig``).
    """
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable forward references: leave the values as they are
        return kwargs
    out = dict(kwargs)
    for name, value in kwargs.items():
        if not isinstance(value, dict):
            continue
        hint = hints.get(name)
        candidates = typing.get_args(hint) if typing.get_args(hint) else (hint,)
        target = next((c for c in candidates if isinstance(c, type) and dataclasses.is_dataclass(c)), None)
        if target is not None:
            fields = {f.name: f for f in dataclasses.fields(target)}
            unknown = sorted(set(value) - set(fields))
            if unknown:
                raise RecipeError(f"{cls.__name__}.{name}: unknown key(s) {unknown}; choices: {sorted(fields)}")
            out[name] = target(**{k: tuple(v) if isinstance(v, list) and "tuple" in str(fields[k].type) else v
                                  for k, v in value.items()})
    return out
