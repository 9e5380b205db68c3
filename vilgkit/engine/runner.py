"""``vilgkit run``: parse a recipe, save it resolved, run its stages in order."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
import yaml

import vilgkit
from vilgkit.components import ComponentStore
from vilgkit.errors import RecipeError
from vilgkit.interfaces import RunContext, Stage
from vilgkit.plugins import get_plugin_manager
from vilgkit.recipe import instantiate, parse_recipe, to_dict

RESOLVED_RECIPE = "recipe.resolved.yaml"


def resolve(paths: list[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Parse and validate recipe files into the resolved plain-dict recipe."""
    get_plugin_manager()
    import vilgkit.builtins  # noqa: F401  (core components register on import)

    return to_dict(parse_recipe(paths, overrides))


def write_resolved_recipe(recipe: dict[str, Any], run_dir: Path) -> Path:
    """Write the resolved recipe with versions (vilgkit, torch, plugins) into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = dict(recipe)
    record["_versions"] = {
        "vilgkit": vilgkit.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "plugins": get_plugin_manager().versions(),
    }
    path = run_dir / RESOLVED_RECIPE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    tmp.replace(path)
    return path


def select_stages(stages: list[Stage], subset: list[str] | None) -> list[Stage]:
    """Stages to run, in recipe order; unknown names are an error listing the recipe's stages."""
    if not subset:
        return stages
    names = [s.name for s in stages]
    unknown = [n for n in subset if n not in names]
    if unknown:
        raise RecipeError(f"unknown stage(s) {', '.join(unknown)}; this recipe has: {', '.join(names)}")
    return [s for s in stages if s.name in subset]


def run(
    paths: list[str],
    overrides: list[str] | None = None,
    *,
    stages: list[str] | None = None,
    resume: bool = False,
    debug: bool = False,
) -> RunContext:
    """Run a recipe's stages; returns the context (run dir, built components)."""
    pm = get_plugin_manager()
    recipe = resolve(paths, overrides)
    pm.hook.vilgkit_recipe_loaded(recipe=recipe, path=", ".join(map(str, paths)))
    stage_objs: list[Stage] = instantiate(recipe.get("stages") or [])
    if not stage_objs:
        raise RecipeError(f"{', '.join(map(str, paths))}: the recipe has no stages")
    names = [s.name for s in stage_objs]
    if len(set(names)) != len(names):
        raise RecipeError(f"stage names must be unique, got {names}")
    selected = select_stages(stage_objs, stages)
    run_dir = Path(recipe["run_dir"])
    write_resolved_recipe(recipe, run_dir)
    ctx = RunContext(
        run_dir=run_dir,
        components=ComponentStore(recipe, on_built=lambda k, c: pm.hook.vilgkit_component_built(key=k, component=c)),
        recipe=recipe,
        seed=int(recipe.get("seed", 0)),
        resume=resume,
        debug=debug,
    )
    for stage in selected:
        summary = stage.run(ctx)
        pm.hook.vilgkit_stage_finished(stage=stage.name, summary=summary, run_dir=str(run_dir))
    return ctx
