"""``vilgkit run``: parse a recipe, save it resolved, run its stages in order."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

import vilgkit
from vilgkit.artifacts import CHECKPOINTS_DIR, RESOLVED_RECIPE, RunDir  # noqa: F401  (RESOLVED_RECIPE: re-exported)
from vilgkit.components import ComponentStore
from vilgkit.engine.ranks import is_main_process, stage_barrier
from vilgkit.engine.rng import seed_everything
from vilgkit.errors import RecipeError, VilgkitError
from vilgkit.interfaces import RunContext, Stage
from vilgkit.plugins import get_plugin_manager, notify
from vilgkit.recipe import build, load_components, parse_recipe, to_dict


def resolve(paths: list[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Parse and validate recipe files into the resolved plain-dict recipe."""
    load_components()
    return to_dict(parse_recipe(paths, overrides))


def write_resolved_recipe(recipe: dict[str, Any], run_dir: Path) -> Path:
    """Write the resolved recipe with versions (vilgkit, torch, plugins) into ``run_dir``
    (atomically, hashed into the run's manifest)."""
    versions = {
        "vilgkit": vilgkit.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "plugins": get_plugin_manager().versions(),
    }
    return RunDir(run_dir).write_recipe(recipe, versions)


def check_run_dir(run_dir: Path, stages: list[Stage], recipe: dict[str, Any], resume: bool) -> None:
    """Everything that would make the run refuse an existing run directory, checked before anything
    is written there: without ``--resume`` a stage folder that holds checkpoints is an error; with
    it, the recipe must be one the newest checkpoint of each stage can continue (the Trainer checks
    again, with its full configuration, when it loads).

    Raises:
        VilgkitError: checkpoints without ``--resume``.
        IncompatibleResumeError: the recipe changed in ways a checkpoint cannot continue (listed).
    """
    from vilgkit.engine.checkpoint import CheckpointManager, DamagedCheckpointError, read_meta
    from vilgkit.engine.compat import check_resume

    for stage in stages:
        out_dir = Path(run_dir) / stage.name
        latest = CheckpointManager(out_dir / CHECKPOINTS_DIR, strategy=None).latest()
        if latest is None:
            continue
        step, path = latest
        if not resume:
            raise VilgkitError(
                f"{out_dir} already has checkpoints (newest: step {step}); pass --resume to continue "
                "them, or use another run_dir to start over"
            )
        try:
            meta = read_meta(path)
        except DamagedCheckpointError:
            continue  # the Trainer sets it aside and looks at the older ones
        check_resume(
            str(path),
            meta.get("recipe"),
            recipe,
            {},
            {},
            stage_name=stage.name,
            safe=tuple(getattr(stage, "safe_resume_keys", ()) or ()),
        )


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
    artifacts = RunDir(run_dir)
    main = is_main_process()
    # one writer per run directory: rank 0 takes the lock before anything is written (the other
    # ranks wait for it at the barrier below), checks everything, and only then writes
    took_lock = artifacts.lock("vilgkit run") if main else False
    try:
        check_run_dir(run_dir, selected, recipe, resume)
        if main:
            write_resolved_recipe(recipe, run_dir)
        # files the recipe names outside the run are copied in; components are built from the copies
        build_recipe = artifacts.adopt_external_files(recipe, write=main)
        ctx = RunContext(
            run_dir=run_dir,
            components=ComponentStore(
                build_recipe, on_built=lambda k, c: notify("vilgkit_component_built", key=k, component=c)
            ),
            recipe=recipe,
            seed=int(recipe.get("seed", 0)),
            resume=resume,
            debug=debug,
        )
        stage_barrier(ctx)
        for stage in selected:
            # every stage starts from the same seeded state, so a stage run alone (--stages) builds
            # and initialises its components exactly as it does inside the full recipe
            seed_everything(ctx.seed)
            summary = stage.run(ctx)
            if main:  # everything the stage wrote (logs, samples, outputs) is hashed into the manifest
                artifacts.record_tree(artifacts.stage(stage.name))
            notify("vilgkit_stage_finished", stage=stage.name, summary=summary, run_dir=str(run_dir))
            stage_barrier(ctx)
    finally:
        if took_lock:
            artifacts.unlock()
    return ctx
