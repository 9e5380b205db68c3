"""``Trainer(export_parts=...)``: the final weights as one file per state-dict prefix, written once
(no ``model.safetensors`` besides them), and no weight dropped silently."""

import pytest
import torch
from vilgkit_engine_toy import ToyRegression, ToyRegressionData

from vilgkit.engine.checkpoint import load_tensors
from vilgkit.engine.config import TrainerConfig
from vilgkit.engine.trainer import Trainer
from vilgkit.errors import VilgkitError
from vilgkit_parallel.single import SingleDevice


def _trainer(module, out, parts):
    cfg = TrainerConfig(steps=2, batch_size=8, lr=0.01, warmup_steps=0, log_every=1)
    return Trainer(
        module,
        ToyRegressionData(32),
        out,
        SingleDevice("cpu"),
        cfg,
        progress=False,
        tensorboard=False,
        export_parts=parts,
    )


def test_each_prefix_gets_its_file_and_no_model_safetensors(tmp_path):
    module = ToyRegression(4)
    names = list(module.state_dict())
    prefix = names[0].split(".")[0] + "."
    trainer = _trainer(module, tmp_path, {prefix: "part.safetensors"})
    trainer.fit()
    assert not (tmp_path / "model.safetensors").exists()
    saved = load_tensors(tmp_path / "part.safetensors")
    assert saved.keys() == {n.removeprefix(prefix) for n in names}
    for name, value in module.state_dict().items():
        assert torch.equal(saved[name.removeprefix(prefix)], value)
    assert trainer.final_files == {prefix: tmp_path / "part.safetensors"}
    assert trainer.trained_module() is module  # unsharded: the module itself


def test_weights_under_no_prefix_are_refused(tmp_path):
    trainer = _trainer(ToyRegression(4), tmp_path, {"nothing.": "part.safetensors"})
    with pytest.raises(VilgkitError, match="fall under none of export_parts"):
        trainer.fit()
