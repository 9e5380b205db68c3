"""``vilgkit run``: parse a recipe, save it resolved, run its stages in order."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch
import yaml

import vilgkit
from vilgkit.components import ComponentStore
from vilgkit.engine.ranks import is_main_process, stage_barrier
from vilgkit.engine.rng import seed_everything
from vilgkit.errors import RecipeError
from vilgkit.interfaces import RunContext, Stage
from vilgkit.plugins import get_plugin_manager, notify
from vilgkit.recipe import build, load_components, parse_recipe, to_dict

RESOLVED_RECIPE = "recipe.resolved.yaml"


def resolve(paths: list[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Parse and validate recipe files into the resolved plain-dict recipe."""
    load_components()
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
    preflight: bool = True,
) -> RunContext:
    """Run a recipe's stages; returns the context (run dir, built components).

    With ``preflight`` (the default) the training stages about to run are first planned against
    the hardware this launch sees (:func:`vilgkit.recipe_plan.preflight`), before anything is built;
    a stage that does not fit stops the run with the plan's numbers.
    """
    get_plugin_manager()
    recipe = resolve(paths, overrides)
    notify("vilgkit_recipe_loaded", recipe=recipe, path=", ".join(map(str, paths)))
    if preflight:
        from vilgkit.interfaces.stage import stage_name
        from vilgkit.recipe_plan import preflight as check_fits

        names = [stage_name(node) for node in recipe.get("stages") or []]
        command = " ".join([str(paths[0]), *(f"--config {p}" for p in paths[1:])])
        check_fits(recipe, [n for n in names if not stages or n in stages], command)
    stage_objs: list[Stage] = build("stages", recipe.get("stages") or [], source=", ".join(map(str, paths)))
    if not stage_objs:
        raise RecipeError(f"{', '.join(map(str, paths))}: the recipe has no stages")
    names = [s.name for s in stage_objs]
    if len(set(names)) != len(names):
        raise RecipeError(f"stage names must be unique, got {names}")
    selected = select_stages(stage_objs, stages)
    run_dir = Path(recipe["run_dir"])
    if is_main_process():  # one writer: ranks of a torchrun launch share the run dir
        write_resolved_recipe(recipe, run_dir)
    ctx = RunContext(
        run_dir=run_dir,
        components=ComponentStore(recipe, on_built=lambda k, c: notify("vilgkit_component_built", key=k, component=c)),
        recipe=recipe,
        seed=int(recipe.get("seed", 0)),
        resume=resume,
        debug=debug,
    )
    for stage in selected:
        # every stage starts from the same seeded state, so a stage run alone (--stages) builds
        # and initialises its components exactly as it does inside the full recipe
        seed_everything(ctx.seed)
        summary = stage.run(ctx)
        notify("vilgkit_stage_finished", stage=stage.name, summary=summary, run_dir=str(run_dir))
        stage_barrier(ctx)
    return ctx
