"""FSDP (full and hybrid 2-D mesh), DDP, CPU offload, recompute and gradient accumulation on 2 CPU
processes (torchrun, gloo) give the same losses as single-device training; a sharded checkpoint
written by 2 ranks resumes on 1 rank with the same continuation; export consolidates it.

Tolerance: fp32, |Δloss| ≤ 1e-5 and |Δweight| ≤ 1e-5 (reduction order differs between ranks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vilgkit.testing.torchrun import run_torchrun

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import toy  # noqa: E402

pytestmark = pytest.mark.distributed
TOL = 1e-5


def _torchrun(nproc: int, out: Path, *scenarios: str) -> dict:
    proc = run_torchrun(HERE / "worker.py", out, *scenarios, nproc=nproc, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / f"results_w{nproc}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    two = _torchrun(2, out, "fsdp_full", "hsdp_2x1", "hsdp_1x2", "ddp", "fsdp_meta", "save_resume", "meta_init")
    one = _torchrun(1, out, "resume")
    return out, two, one


@pytest.fixture(scope="module")
def reference():
    from vilgkit_parallel.single import SingleDevice

    model = toy.make_model()
    losses = toy.train(model, SingleDevice("cpu"), toy.adamw(model.parameters()), range(6), 1, 0, 1)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "scenario,mesh", [("fsdp_full", [1, 2]), ("hsdp_2x1", [2, 1]), ("hsdp_1x2", [1, 2]), ("ddp", [2])]
)
def test_same_losses_as_single_device(runs, reference, scenario, mesh):
    _, two, _ = runs
    got = two[scenario]
    assert got["mesh"] == mesh
    assert got["losses"] == pytest.approx(reference[0][:4], abs=TOL)


def test_meta_build_materialises_and_trains(runs):
    losses = runs[1]["fsdp_meta"]["losses"]
    assert runs[1]["fsdp_meta"]["finite"] and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 4.0  # from a N(0, 0.1) init on 32 classes: ~ln 32 = 3.47 at the start


def test_meta_build_gives_the_weights_of_a_cpu_build(runs):
    """FSDP builds on meta and each rank fills only its shards, yet the consolidated weights are
    exactly a CPU build's from the same seed, and the RNG continues as after a CPU build."""
    got = runs[1]["meta_init"]
    assert got["on_meta"] and got["rng_same"] and got["keys_same"]
    assert got["max_abs_diff"] == 0.0
    assert got["local_params"] < 0.6 * got["params"]  # this rank holds about half


def test_resume_on_another_world_size(runs, reference):
    _, two, one = runs
    assert two["save_resume"]["losses"] == pytest.approx(reference[0], abs=TOL)
    assert one["resume"]["losses"] == pytest.approx(two["save_resume"]["losses"][3:], abs=TOL)
    assert one["resume"]["trainer"] == repr({"step": 3, "note": ("tuple", 1)})
    final = one["resume"]["final"]
    for key, value in reference[1].items():
        assert torch.allclose(torch.tensor(final[key]), value.flatten(), atol=TOL), key


def test_export_consolidates_for_single_device(runs, tmp_path):
    from safetensors.torch import load_file

    from vilgkit.commands.export import export

    out, two, _ = runs
    run = tmp_path / "run"
    (run / "train_generator" / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(out / "ckpt" / "step_3", run / "train_generator" / "checkpoints" / "step_00000003")
    (run / "recipe.resolved.yaml").write_text(
        yaml.safe_dump({"stages": [{"class_path": "vilgkit.stages.train_generator.TrainGenerator"}]})
    )
    stage = export(run, tmp_path / "out")
    weights = load_file(str(stage / "model.safetensors"))
    model = toy.ToyModel()
    model.load_state_dict(weights)  # the single-device model loads it (strict)
    for key, value in model.state_dict().items():
        assert torch.allclose(value.flatten(), torch.tensor(two["save_resume"]["saved"][key]), atol=0), key
    assert "SingleDevice" in (tmp_path / "out" / "recipe.resolved.yaml").read_text()
    assert not (tmp_path / "out" / "train_generator" / "checkpoints").exists()


def test_tampered_checkpoint_is_refused(runs, tmp_path):
    import shutil

    from vilgkit import sharded

    out = runs[0]
    bad = tmp_path / "bad"
    shutil.copytree(out / "ckpt" / "step_3", bad)
    sharded.verify(bad)
    with open(bad / ".metadata", "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(sharded.CheckpointIntegrityError, match="does not match"):
        sharded.load_metadata(bad)
    (bad / sharded.MARKER).unlink()
    with pytest.raises(sharded.CheckpointIntegrityError, match="not a complete"):
        sharded.consolidate_module(bad, "model")


def test_process_group_is_destroyed_at_exit():
    """A rank leaves its gloo group when the interpreter exits (a group still alive then can abort a
    finished rank with "terminate called without an active exception")."""
    code = (
        "import atexit, torch, torch.distributed as dist\n"
        "from vilgkit_parallel.distributed import init_process_group\n"
        "init_process_group(torch.device('cpu'))\n"
        "assert dist.is_initialized()\n"
        "atexit._run_exitfuncs()\n"
        "print('initialized after exit handlers:', dist.is_initialized())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "RANK", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "initialized after exit handlers: False" in out.stdout
