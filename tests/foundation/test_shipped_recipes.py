"""Every recipe shipped under ``recipes/`` parses and validates, and its stages build.

A stale key or a renamed argument in a shipped recipe should fail here, in seconds, not minutes
into `make demo` on a user's machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# an ablation set's ablation.yaml is how `vilgkit ablation` runs the set, not a recipe
# (tests/ablation/test_runner.py reads every shipped one)
SHIPPED = sorted(p for p in RECIPES.rglob("*.yaml") if p.name != "ablation.yaml")


def test_there_are_shipped_recipes():
    assert any(p.name == "shapes_tiny.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(RECIPES)) for p in SHIPPED])
def test_shipped_recipe_resolves_and_its_stages_build(path):
    from vilgkit.engine.runner import resolve
    from vilgkit.recipe import build

    base = path.parent / "base.yaml"
    # a row of an ablation set is merged on top of its base.yaml (`vilgkit ablation`); alone it may
    # hold only the component it changes
    recipe = resolve([str(base), str(path)] if path.name.startswith("row") and base.is_file() else [str(path)])
    assert recipe.get("stages"), f"{path} has no stages"
    for node in recipe["stages"]:
        try:
            [stage] = build(
                "stages", [node], source=str(path)
            )  # stage constructors check their arguments (steps, metrics, directions…)
        except FileNotFoundError as err:
            # real-data recipes name their files (held-out shards) by placeholder paths the user overrides
            assert (RECIPES / "real") in path.parents, f"{path}: {err}"
            continue
        assert stage.name
