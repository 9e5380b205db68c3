"""Atomic, hashed, pruned checkpoints through the SingleDevice strategy; safe loading."""

import json
import os
import pickle

import pytest
import torch
from torch import nn

from vilgkit.artifacts import CorruptFileError
from vilgkit.engine.checkpoint import (
    FAULT_SAVE_FAIL_ENV,
    MANIFEST,
    CheckpointError,
    CheckpointManager,
    load_model_weights,
    load_optimizer,
    save_model_weights,
    verify,
)
from vilgkit_parallel.single import SingleDevice


def make_state(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    return {
        "model": model,
        "optimizers": {"main": opt},
        "schedulers": {"main": sched},
        "trainer": {"step": 3, "note": "x"},
        "rng": {"torch": torch.get_rng_state()},
    }


def test_round_trip_restores_everything(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", SingleDevice("cpu"), keep=2)
    saved = make_state(0)
    path = manager.save(3, saved, meta={"recipe": {"a": 1}})
    assert path.name == "step_00000003" and manager.latest() == (3, path)
    manifest = verify(path)
    assert set(manifest["files"]) == {
        "model.safetensors",
        "optimizers.main.pt",
        "schedulers.main.json",
        "trainer.json",
        "rng.safetensors",
        "meta.json",
    }
    loaded = make_state(1)
    loaded["trainer"], loaded["rng"] = {}, {}
    manager.load(path, loaded)
    for a, b in zip(saved["model"].state_dict().values(), loaded["model"].state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = saved["optimizers"]["main"].state_dict(), loaded["optimizers"]["main"].state_dict()
    for k in sa["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name])
    assert loaded["trainer"] == {"step": 3, "note": "x"}
    assert torch.equal(loaded["rng"]["torch"], saved["rng"]["torch"])


def test_keeps_last_k_and_never_the_newest_incomplete(tmp_path):
    manager = CheckpointManager(tmp_path, SingleDevice("cpu"), keep=2)
    for step in (1, 2, 3, 4):
        manager.save(step, make_state())
    assert [s for s, _ in manager.complete()] == [3, 4]
    zero = CheckpointManager(tmp_path, SingleDevice("cpu"), keep=0)  # 0 still keeps the newest
    zero.save(5, make_state())
    assert [s for s, _ in zero.complete()] == [5]


def test_a_failed_save_leaves_nothing_that_counts(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, SingleDevice("cpu"), keep=3)
    manager.save(1, make_state())
    monkeypatch.setenv(FAULT_SAVE_FAIL_ENV, "2")
    with pytest.raises(RuntimeError, match="injected"):
        manager.save(2, make_state())
    assert (tmp_path / ".tmp-step_00000002" / "model.safetensors").is_file()  # files were written...
    assert manager.latest()[0] == 1  # ...but the step does not count
    # a folder renamed by hand without a manifest does not count either
    os.rename(tmp_path / ".tmp-step_00000002", tmp_path / "step_00000002")
    assert manager.latest()[0] == 1
    monkeypatch.delenv(FAULT_SAVE_FAIL_ENV)
    manager.save(3, make_state())
    # the unfinished .tmp- save is removed; the step folder without a manifest is kept, moved aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "step_00000001", "step_00000003"]
    assert (tmp_path / "damaged" / "step_00000002").is_dir()


def test_corruption_is_detected_and_an_older_checkpoint_used(tmp_path):
    manager = CheckpointManager(tmp_path, SingleDevice("cpu"), keep=3)
    manager.save(1, make_state(0))
    newest = manager.save(2, make_state(5))
    blob = bytearray((newest / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # same size, different bytes: only the hash notices
    (newest / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="hash mismatch in model.safetensors"):
        verify(newest)
    warnings = []
    target = make_state(9)
    step, _ = manager.load_latest_valid(target, warn=warnings.append)
    assert step == 1 and "hash mismatch" in warnings[0]
    # the damaged one is kept, moved aside (never deleted)
    assert not newest.exists() and (tmp_path / "damaged" / "step_00000002" / "model.safetensors").read_bytes() == bytes(
        blob
    )
    # a truncated file makes the folder incomplete: not counted, and moved aside with a warning
    newest = manager.save(2, make_state(5))
    (newest / "optimizers.main.pt").write_bytes(b"")
    assert manager.latest()[0] == 1
    warnings.clear()
    assert manager.load_latest_valid(make_state(9), warn=warnings.append)[0] == 1
    assert "optimizers.main.pt is 0 bytes" in warnings[0] and (tmp_path / "damaged" / "step_00000002.2").is_dir()


def test_tied_weights_and_shape_errors(tmp_path):
    class Tied(nn.Module):
        def __init__(self, d=4):
            super().__init__()
            self.emb = nn.Embedding(6, d)
            self.out = nn.Linear(d, 6, bias=False)
            self.out.weight = self.emb.weight

    src = Tied()
    save_model_weights(tmp_path / "w.safetensors", src)
    dst = Tied()
    load_model_weights(dst, tmp_path / "w.safetensors")
    assert torch.equal(dst.emb.weight, src.emb.weight) and dst.out.weight is dst.emb.weight
    with pytest.raises(CheckpointError, match=r"shape changed: emb.weight: file \[6, 4\] vs model \[6, 8\]"):
        load_model_weights(Tied(8), tmp_path / "w.safetensors")
    other = nn.Linear(4, 6)
    with pytest.raises(CheckpointError, match="missing: bias, weight"):
        load_model_weights(other, tmp_path / "w.safetensors")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vilgkit_pwned",))


def test_optimizer_files_are_never_unpickled(tmp_path):
    path = tmp_path / "optim_main.pt"
    torch.save({"state": {}, "param_groups": [], "x": Evil()}, path)
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(CorruptFileError, match="optim_main.pt is not an optimizer state") as err:
        load_optimizer(path, opt)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert not os.path.exists("/tmp/vilgkit_pwned")


def test_manifest_lists_sizes_and_hashes(tmp_path):
    path = CheckpointManager(tmp_path, SingleDevice("cpu")).save(7, make_state())
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["step"] == 7
    for rel, info in manifest["files"].items():
        assert (path / rel).stat().st_size == info["bytes"] and len(info["sha256"]) == 64
