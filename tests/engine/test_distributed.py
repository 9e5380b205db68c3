"""The same Trainer loop under DDP (2 CPU ranks, gloo) matches single-device training and resumes."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from vilgkit_engine_toy import ToyRegression, ToyRegressionData

from vilgkit.engine.checkpoint import load_tensors
from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.trainer import Trainer
from vilgkit.testing.torchrun import run_torchrun
from vilgkit_parallel.single import SingleDevice

SUPPORT = Path(__file__).parent / "support"


def torchrun(*args):
    try:
        proc = run_torchrun(SUPPORT / "engine_ddp_train.py", *map(str, args), timeout=240, pythonpath=[SUPPORT])
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun timed out:\n{err.output[-2000:]}{err.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_matches_single_device_and_resumes(tmp_path):
    torch.manual_seed(0)
    single = ToyRegression(4, hidden=16)
    cfg = TrainerConfig(steps=9, batch_size=16, lr=0.01, warmup_steps=2, log_every=3, checkpoint_every=3, grad_accum=2)
    ref = Trainer(
        single, ToyRegressionData(128), tmp_path / "single", SingleDevice("cpu"), cfg, progress=False, tensorboard=False
    ).fit()

    out = tmp_path / "ddp"
    torchrun("DDP", out, 9, 0)
    got = json.loads((out / "final_metrics.json").read_text())
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)  # logged losses are averaged over ranks
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    weights = load_tensors(out / "model.safetensors")
    for name, value in single.state_dict().items():
        assert torch.allclose(weights[name], value, atol=1e-6), name

    # resume from step 6 (drop the final checkpoint and export): the same weights come back
    shutil.rmtree(out / "checkpoints" / "step_00000009")
    (out / "model.safetensors").unlink()
    torchrun("DDP", out, 9, 1)
    again = load_tensors(out / "model.safetensors")
    for name in weights:
        assert torch.equal(again[name], weights[name]), name
