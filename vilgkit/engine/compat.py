"""Can a checkpoint be resumed under the current recipe? Differences are listed, safe ones allowed.

The resolved recipe is stored in every checkpoint. On ``--resume`` it is flattened to dotted keys
and compared with the current one. A difference is **safe** when its key matches one of
:data:`SAFE_RESUME_KEYS` (shell-style patterns); any other difference (a changed ``class_path``, a
width, a batch size, a learning rate, the data...) stops the resume with the full list.

Only this stage's entry of ``stages`` is compared: editing a later stage never blocks resuming an
earlier one. Stages may pass extra safe patterns (e.g. their own ``sample_every``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from vilgkit.errors import VilgkitError

#: changes that never invalidate a checkpoint: run length, logging, checkpoint cadence, workers,
#: the device, bookkeeping (names, output folder, versions)
SAFE_RESUME_KEYS: tuple[str, ...] = (
    "run_dir",
    "name",
    "_versions.*",
    "*.trainer.steps",
    "*.trainer.log_every",
    "*.trainer.checkpoint_every",
    "*.trainer.keep_checkpoints",
    "*.trainer.num_workers",
    "*.trainer.nonfinite",
    "*.trainer.max_skipped",
    "*.log_every",
    "*.sample_every",
    "*.eval_every",
    "*.samples_every",
    "*.num_workers",
    "strategy.init_args.device",
)

#: TrainerConfig fields that may change between the checkpoint and the resume
SAFE_CONFIG_FIELDS = (
    "steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_workers",
    "nonfinite",
    "max_skipped",
)


class IncompatibleResumeError(VilgkitError):
    """The current recipe changed the run in ways the checkpoint cannot continue."""


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` → ``{"a.b.0": 1}``; empty containers are kept as leaves."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, (list, tuple)) and node:
        out = {}
        for i, value in enumerate(node):
            out.update(flatten(value, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix: list(node) if isinstance(node, tuple) else node}


def _stage_name(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    name = (entry.get("init_args") or {}).get("name")
    if name:
        return str(name)
    from vilgkit.interfaces.stage import _snake

    return _snake(str(entry.get("class_path", "")).rpartition(".")[2]) or None


def _focus(recipe: dict[str, Any], stage_name: str | None) -> dict[str, Any]:
    """The recipe with ``stages`` reduced to this stage's entry (keyed by name, not position)."""
    out = {k: v for k, v in recipe.items() if k != "stages"}
    if stage_name is not None:
        for entry in recipe.get("stages") or []:
            if _stage_name(entry) == stage_name:
                out["stages"] = {stage_name: entry}
    return out


def recipe_differences(
    saved: dict[str, Any], current: dict[str, Any], *, stage_name: str | None = None, safe: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """``(unsafe, safe)`` human-readable differences between a checkpoint's recipe and the current one."""
    patterns = tuple(SAFE_RESUME_KEYS) + tuple(safe)
    old, new = flatten(_focus(saved, stage_name)), flatten(_focus(current, stage_name))
    unsafe_diffs, safe_diffs = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            continue
        line = f"{key}: {a!r} -> {b!r}"
        (safe_diffs if any(fnmatch.fnmatchcase(key, p) for p in patterns) else unsafe_diffs).append(line)
    return unsafe_diffs, safe_diffs


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Unsafe differences between two ``TrainerConfig`` dicts."""
    return [
        f"trainer.{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k not in SAFE_CONFIG_FIELDS and _norm(saved.get(k)) != _norm(current.get(k))
    ]


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_resume(
    checkpoint: str,
    saved_recipe: dict[str, Any] | None,
    current_recipe: dict[str, Any] | None,
    saved_config: dict[str, Any],
    current_config: dict[str, Any],
    *,
    stage_name: str | None = None,
    safe: Iterable[str] = (),
) -> list[str]:
    """Raise :class:`IncompatibleResumeError` listing unsafe differences; return the safe ones."""
    unsafe: list[str] = []
    allowed: list[str] = []
    if saved_recipe is not None and current_recipe is not None:
        unsafe, allowed = recipe_differences(saved_recipe, current_recipe, stage_name=stage_name, safe=safe)
    # the trainer's own settings, also when they did not come from the recipe (reported once)
    listed = {d.split(":")[0].split(".trainer.")[-1] for d in unsafe if ".trainer." in d}
    unsafe += [
        d for d in config_differences(saved_config, current_config) if d.split(":")[0][len("trainer.") :] not in listed
    ]
    if unsafe:
        raise IncompatibleResumeError(
            f"cannot resume from {checkpoint}: the recipe changed in ways the checkpoint cannot continue:\n  "
            + "\n  ".join(unsafe)
            + "\nRestore these values, or start a fresh run (another run_dir). Changes allowed on resume: "
            + ", ".join(SAFE_RESUME_KEYS + tuple(safe))
        )
    return allowed
