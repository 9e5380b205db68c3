"""Fixtures of the application tests: a tiny run with a trained image–text matcher on top."""

from __future__ import annotations

import shutil

import pytest
import yaml

from vilgkit.cli import main

MATCHER_STAGE = {
    "class_path": "TrainMatcher",
    "init_args": {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "trainer": {"steps": 4, "batch_size": 8, "lr": 0.002, "warmup_steps": 0, "log_every": 2},
    },
}
EVALUATE_STAGE = {
    "class_path": "Evaluate",
    "init_args": {"metrics": ["shapes"], "num_samples": 2, "num_candidates": 3, "reranker": "matcher", "device": "cpu"},
}


def _run_with_matcher(tiny_run, root, matcher_stage: dict, evaluate_stage: dict):
    """A copy of the tiny run with the two stages run on top of it, through the CLI."""
    run_dir = root / "run"
    shutil.copytree(tiny_run, run_dir)
    recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    recipe.pop("_versions", None)
    recipe["stages"] = [*recipe["stages"], matcher_stage, evaluate_stage]
    path = root / "with_matcher.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--run_dir", str(run_dir), "--stages", "train_matcher,evaluate"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def matcher_run(tiny_run, tmp_path_factory):
    """The tiny run with a TrainMatcher and an Evaluate(reranker: matcher) stage run on top, through the CLI."""
    return _run_with_matcher(tiny_run, tmp_path_factory.mktemp("matcher"), MATCHER_STAGE, EVALUATE_STAGE)


@pytest.fixture(scope="session")
def pixel_matcher_run(tiny_run, tmp_path_factory):
    """The same with a matcher that reads pixels (pasted-code negatives too), and Evaluate(reranker: pixel_matcher)."""
    pixels = {"image_input": "pixels", "patch_negatives": 1}
    stage = {**MATCHER_STAGE, "init_args": {**MATCHER_STAGE["init_args"], **pixels}}
    evaluate = {**EVALUATE_STAGE, "init_args": {**EVALUATE_STAGE["init_args"], "reranker": "pixel_matcher"}}
    return _run_with_matcher(tiny_run, tmp_path_factory.mktemp("pixel_matcher"), stage, evaluate)
