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

``class_path`` is a short name looked up in the registry of its key (``generator:`` accepts only
generator classes), or a dotted import path. Several files merge in order (later wins; a changed
``class_path`` drops the earlier ``init_args``), then dotted command-line overrides apply
(``--generator.init_args.num_layers 2``). Derived values are linked (see ``LINKS``).

One path from recipe to objects: :func:`parse_recipe` validates (jsonargparse, against the
constructors' type hints), :func:`build` instantiates one key through jsonargparse as well, so a
dataclass-typed argument (``trainer: TrainerConfig``) is built once, by the same code that checked
it. A run directory's recipe is loaded by :func:`load_run_recipe`: the same checks, and only
registered classes.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from torch.utils.data import Dataset

from vilgkit import registry as R
from vilgkit.errors import RecipeError
from vilgkit.interfaces import (
    Generator,
    ImageTokenizer,
    ParallelStrategy,
    Reconstructor,
    Stage,
    TextTokenizer,
)
from vilgkit.recipe_errors import blame_override, describe_validation_error

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
#: the provenance a run writes into its recipe.resolved.yaml (versions); read, never validated or built
PROVENANCE_KEY = "_versions"


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


def registry_for(key: str) -> R.VilgRegistry | None:
    """The registry whose classes the dotted recipe key accepts (``stages.0.init_args.data`` → datasets)."""
    parts = [p for p in key.split(".") if not p.isdigit() and p != "init_args"]
    return NESTED_REGISTRIES.get(parts[-1]) if parts else None


def class_path_of(cls: type) -> str:
    """The dotted import path a resolved recipe records for ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_class_paths(node: Any, source: str, key: str = "", *, registered_only: bool = False) -> Any:
    """Replace registry short names by dotted paths everywhere in the tree; errors name the key.

    A ``class_path`` is looked up in the registry of its key only (a ``generator:`` accepts generator
    classes, never a data set). ``registered_only`` (a run directory's recipe: data, not code) also
    refuses dotted paths that are not a class registered there, before anything is imported.
    """
    if isinstance(node, list):
        return [
            resolve_class_paths(v, source, f"{key}.{i}" if key else str(i), registered_only=registered_only)
            for i, v in enumerate(node)
        ]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        child_key = f"{key}.{k}" if key else k
        out[k] = resolve_class_paths(v, source, child_key, registered_only=registered_only)
    if "class_path" in out:
        dotted = f"{key}.class_path" if key else "class_path"
        out["class_path"] = _resolve_one(out["class_path"], source, dotted, key, registered_only)
        _check_init_args(out, source, key)
    return out


def _resolve_one(name: Any, source: str, dotted: str, owner_key: str, registered_only: bool) -> str:
    registry = registry_for(owner_key)
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{source}: {dotted}: a class_path is a class name, got {name!r}", key=dotted)
    if registry is not None:
        registered = registry.module_dict
        if name in registered:
            return class_path_of(registered[name])
        if any(class_path_of(cls) == name for cls in registered.values()):
            return name
    if "." in name and not registered_only:
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
            getattr(module, attr)
        except (ImportError, AttributeError) as err:
            raise RecipeError(f"{source}: {dotted}: cannot import {name!r} ({err})", key=dotted) from None
        return name
    if registry is None:
        why = "only registered components may be named here" if registered_only else "give its dotted import path"
        raise RecipeError(f"{source}: {dotted}: {name!r} is not a class of a registry for this key; {why}", key=dotted)
    choices = registry.names()
    close = registry.closest(name.rpartition(".")[2])
    hint = f" Did you mean {close[0]}?" if close else ""
    what = "registered " if registered_only else ""
    from vilgkit.plugins import failed_plugins_note

    raise RecipeError(
        f"{source}: {dotted}: unknown class_path {name!r}: not a {what}class of registry '{registry.name}'. "
        f"Available: {', '.join(choices) or '(none registered)'}.{hint}{failed_plugins_note()}",
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
        return validate(merged, source)
    except RecipeError as err:
        raise blame_override(err, source, overrides or []) from None


def validate(recipe: dict[str, Any], source: str, *, registered_only: bool = False) -> Namespace:
    """Check a merged recipe: known keys, class paths in their keys' registries, jsonargparse types.

    A run's provenance (:data:`PROVENANCE_KEY`) is left out, so a ``recipe.resolved.yaml`` validates
    (and runs again) as it was written."""
    known = set(SCALAR_KEYS) | set(COMPONENTS) | {"stages"}
    recipe = {k: v for k, v in recipe.items() if k != PROVENANCE_KEY}
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise RecipeError(
                f"{source}: unknown top-level key '{key}'. Recipe keys: {', '.join(sorted(known))}.{hint}", key=key
            )
    resolved = resolve_class_paths(recipe, source, registered_only=registered_only)
    parser = build_parser()
    try:
        return parser.parse_object(resolved)
    except Exception as err:  # jsonargparse.ArgumentError and friends
        key, problem = describe_validation_error(str(err), resolved)
        raise RecipeError(f"{source}: {key}: {problem}", key=key) from None


def load_components() -> None:
    """Fill the registries: the plugins (entry points) and the core components."""
    from vilgkit.plugins import get_plugin_manager

    get_plugin_manager()
    import vilgkit.builtins  # noqa: F401  (core components register on import)


def load_run_recipe(path: str | Path) -> dict[str, Any]:
    """A run directory's ``recipe.resolved.yaml``, validated as ``vilgkit run`` validates a recipe.

    A run directory is data that may come from elsewhere, so its recipe may only name classes
    registered for each key (checked before anything is imported) with the types the components'
    constructors declare; anything else is a :class:`RecipeError` naming the file and the key.
    """
    load_components()
    return to_dict(validate(load_yaml(path), str(path), registered_only=True))


def to_dict(cfg: Namespace) -> dict[str, Any]:
    """The resolved recipe as plain data (full class paths, defaults filled in, links applied)."""
    return cfg.as_dict()


# --------------------------------------------------------------------------- building


def build(key: str, node: Any, *, source: str = "recipe", registered_only: bool = False) -> Any:
    """The one way a recipe node becomes an object: ``build("generator", {class_path, init_args})``.

    Class paths are resolved in the registry of ``key`` (see :func:`resolve_class_paths`), then
    jsonargparse checks every value against the constructors' type hints and instantiates the tree,
    nested components first; dataclass-typed arguments (``trainer: TrainerConfig``) arrive as
    dataclasses. ``key`` is a component key or ``"stages"`` (then ``node`` is the list of stages).
    """
    resolved = resolve_class_paths({key: node}, source, registered_only=registered_only)
    parser = ArgumentParser(exit_on_error=False, default_env=False)
    if key == "stages":
        parser.add_argument("--stages", type=list[Stage], default=[])
    elif key in COMPONENTS:
        parser.add_argument(f"--{key}", type=COMPONENTS[key][0], required=True)
    else:
        raise KeyError(f"no recipe key {key!r}; keys: {', '.join([*COMPONENTS, 'stages'])}")
    try:
        cfg = parser.parse_object(resolved)
    except Exception as err:  # jsonargparse.ArgumentError and friends
        key_name, problem = describe_validation_error(str(err), resolved)
        raise RecipeError(f"{source}: {key_name}: {problem}", key=key_name) from None
    try:
        return parser.instantiate(cfg)[key]
    except Exception as err:
        raise _constructor_error(err) from None


def _constructor_error(err: BaseException) -> BaseException:
    """The constructor's own exception, not jsonargparse's wrapper listing the ``X | None`` subtypes it tried."""
    while str(err).startswith("Does not validate against any of the Union subtypes"):
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    return err
