"""``vilgkit export``: the files it copies are verified against the source run's manifest, and the
export carries its own manifest (consolidated weights included), so loading it verifies it too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vilgkit import artifacts
from vilgkit.artifacts import MANIFEST, CorruptFileError, RunDir
from vilgkit.testing.torchrun import free_port

ROOT = Path(__file__).resolve().parents[2]

SAVE = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from torch import nn
    from vilgkit_parallel import checkpoint
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=0, world_size=1)
    torch.manual_seed(0)
    model = nn.Module()
    model.generator = nn.Linear(3, 2)
    checkpoint.save(sys.argv[1], {"model": model, "trainer": {"step": 3}}, lambda m: m)
    torch.save(model.generator.state_dict(), sys.argv[1] + ".expected.pt")
    dist.destroy_process_group()
""")


@pytest.fixture
def sharded_run(tmp_path) -> Path:
    run = RunDir(tmp_path / "run")
    step = run.stage("train_generator") / "checkpoints" / "step_00000003"
    step.parent.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SAVE, str(step), str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run.write_recipe({"stages": [{"class_path": "vilgkit.stages.train_generator.TrainGenerator"}]})
    run.write_text("fit_text_tokenizer/vocab.txt", "[PAD]\n[UNK]\n")
    return run.path


def _export(capsys, run: Path, out: Path) -> tuple[int, str]:
    from vilgkit.cli import main

    capsys.readouterr()
    code = main(["export", str(run), "--out", str(out)])
    return code, capsys.readouterr().err


def test_the_export_is_hashed_and_verified_on_load(sharded_run, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _export(capsys, sharded_run, out)
    assert code == 0, err
    listed = RunDir(out).verify_all()
    for name in (
        "recipe.resolved.yaml",
        "fit_text_tokenizer/vocab.txt",
        "train_generator/generator.safetensors",
        "train_generator/model.safetensors",
        "train_generator/export.json",
    ):
        assert name in listed, name
    expected = torch.load(str(sharded_run / "train_generator" / "checkpoints" / "step_00000003") + ".expected.pt")
    got = artifacts.read_weights(out / "train_generator" / "generator.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    path = out / "train_generator" / "generator.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptFileError, match="generator.safetensors does not match its SHA-256"):
        artifacts.read_weights(path)
    assert json.loads((out / MANIFEST).read_text())["format"] == "vilgkit-run/1"


def test_export_refuses_a_source_file_that_changed(sharded_run, tmp_path, capsys):
    (sharded_run / "fit_text_tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n[EVIL]\n")
    code, err = _export(capsys, sharded_run, tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert f"{sharded_run / 'fit_text_tokenizer' / 'vocab.txt'} is" in err
    code, err = _export(capsys, sharded_run, sharded_run / "recipe.resolved.yaml")
    assert code == 2 and "is a file, not a directory" in err
