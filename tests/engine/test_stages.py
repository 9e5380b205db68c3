"""Stages in a recipe: run in order, start from an earlier stage's output or a path, ``--stages`` subsets."""

import json

import pytest
import torch
import yaml

from vilgkit.engine.checkpoint import load_tensors
from vilgkit.engine.runner import run
from vilgkit.errors import RecipeError


def two_stage_recipe(tmp_path, run_dir, init_from="pretrain"):
    trainer = {"steps": 4, "batch_size": 8, "lr": 0.05, "warmup_steps": 1, "log_every": 2}
    doc = {
        "run_dir": str(run_dir),
        "data": {"class_path": "vilgkit_engine_toy.ToyRegressionData", "init_args": {"size": 32}},
        "stages": [
            {"class_path": "vilgkit_engine_toy.TrainToy", "init_args": {"name": "pretrain", "trainer": trainer}},
            {
                "class_path": "vilgkit_engine_toy.TrainToy",
                "init_args": {"name": "finetune", "init_from": init_from, "trainer": trainer},
            },
        ],
    }
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def summary(run_dir, stage):
    return json.loads((run_dir / stage / "summary.json").read_text())


def test_stages_chain_and_subsets(tmp_path):
    first = tmp_path / "first"
    run([str(two_stage_recipe(tmp_path, first))])  # no strategy in the recipe: SingleDevice by default
    pretrained = load_tensors(first / "pretrain" / "model.safetensors")
    assert summary(first, "finetune")["init_weight_sum"] == pytest.approx(
        float(sum(t.sum() for t in pretrained.values()))
    )
    assert summary(first, "finetune")["step"] == 4

    # only the second stage, in a new run, starting from the first run's stage folder (a path)
    second = tmp_path / "second"
    run([str(two_stage_recipe(tmp_path, second, init_from=str(first / "pretrain")))], stages=["finetune"])
    assert not (second / "pretrain").exists() and summary(second, "finetune")["step"] == 4
    # both fine-tunes started from the same weights and the same seeds: the same result
    a = load_tensors(first / "finetune" / "model.safetensors")
    b = load_tensors(second / "finetune" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    third = tmp_path / "third"
    with pytest.raises(FileNotFoundError, match="cannot start from 'pretrain'"):
        run([str(two_stage_recipe(tmp_path, third))], stages=["finetune"])
    with pytest.raises(RecipeError, match="unknown stage.*this recipe has: pretrain, finetune"):
        run([str(two_stage_recipe(tmp_path, third))], stages=["evaluate"])
