"""The plan's ``evaluate`` phase is the main rank's alone (the other ranks hold no copy), the host
check adds the main rank and the others, the fixed per-rank term is counted, and the run-time check
(:func:`vilgkit.recipe_plan.full_copy_fits`) stops an evaluation that would not fit, in one line."""

from pathlib import Path

import pytest

from vilgkit import planning as P
from vilgkit import recipe_plan as R
from vilgkit.errors import VilgkitError

ROOT = Path(__file__).resolve().parents[2]


def _report(phases, host_memory, ranks=4):
    hw = R.Hardware(nodes=1, devices_per_node=ranks, host_memory=host_memory, device_type="cpu")
    report = R.PlanReport("t", "s", "generator", hw, [], 1, 1, 1)
    row = R.PlanRow("recipe", None, P.MemoryPlan(0, 0, 0, 0), host_per_rank=1 * P.GiB)
    report.rows, report.phases = [row], phases
    return report


def test_the_host_check_adds_the_main_rank_and_the_others():
    evaluate = R.Phase("evaluate", 10 * P.GiB, 0, host_others=1 * P.GiB)  # 10 + 3 x 1 = 13 GiB per host
    assert _report([evaluate], 14 * P.GiB).fits()
    short = _report([evaluate], 12 * P.GiB).shortfalls()
    assert short == [
        "host memory: 13.00 GiB per host needed (the main rank 10.00 GiB + 3 x 1.00 GiB), 12.00 GiB per host"
    ]
    every = R.Phase("evaluate", 10 * P.GiB, 0)  # the old accounting: every rank at the main rank's bytes
    assert not _report([every], 14 * P.GiB).fits()


def test_a_sharded_recipes_evaluation_is_planned_on_the_main_rank_only():
    from vilgkit.engine.runner import resolve

    recipe = resolve([str(ROOT / "recipes" / "debug" / "gen_tiny.yaml")], ["--strategy.class_path", "FSDP"])
    hw = R.Hardware(nodes=1, devices_per_node=2, host_memory=None, device_type="cpu")
    report = R.plan_recipe(recipe, hw, stage="train_generator")
    phases = {p.name: p for p in report.phases}
    full = 4 * next(n for k, _, n in report.components if k == "generator")
    build, evaluate = phases["build"], phases["evaluate"]
    assert build.host >= P.RANK_RUNTIME_BYTES  # the process plus what a training rank adds to it
    assert evaluate.host - evaluate.host_others == 2 * full  # built, then its file read: rank 0 only
    assert report.to_json()["phases"]["evaluate"]["host_bytes_other_ranks"] == evaluate.host_others


def test_full_copy_fits_reads_the_memory_available_now(monkeypatch):
    monkeypatch.setattr(R, "available_host_bytes", lambda: 10 * P.GiB)
    assert R.full_copy_fits(8 * P.GiB) and not R.full_copy_fits(int(9.5 * P.GiB))


def test_evaluate_refuses_a_generator_that_does_not_fit(tmp_path, monkeypatch):
    import torch

    from vilgkit import artifacts
    from vilgkit.interfaces import RunContext
    from vilgkit.stages.evaluate import check_evaluation_fits

    (tmp_path / "train_generator").mkdir()
    artifacts.save_weights(tmp_path / "train_generator" / "generator.safetensors", {"w": torch.zeros(256, 256)})
    ctx = RunContext(run_dir=tmp_path, components={}, recipe={"stages": [{"class_path": "TrainGenerator"}]})
    check_evaluation_fits(ctx, None)  # 0.5 MiB: fits
    monkeypatch.setattr(R, "available_host_bytes", lambda: 2**19)
    with pytest.raises(VilgkitError, match=r"needs about 0.00 GiB \(two fp32 copies\).*vilgkit eval"):
        check_evaluation_fits(ctx, None)
