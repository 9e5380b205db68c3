"""After training under a sharding strategy, no rank takes a full copy of the model (issue 24).

A shortened ``gen_tiny`` (fit the text tokenizer, train the generator with a sample grid, fine-tune
VQA from it, evaluate captions) runs through ``vilgkit run`` on 2 CPU ranks (gloo) under ``FSDP``,
launched by ``trace_full_loads.py``, which records on each rank every call of the paths that put a
whole model on one rank. Checked:

* the generator stages' weights files are streamed from the final sharded checkpoint: exactly its
  consolidated tensors, and no ``model.safetensors`` besides them (the weights are written once);
* no rank rebuilds a plain trained copy (``trained_module``) or builds the generator off ``meta``;
  rank 1 never reads a whole weights file; rank 0 does only inside ``Pipeline.from_run_dir`` (the
  Evaluate stage) and its only plain copy is the sample grid's (``_callback_module``);
* ``FinetuneVQA``'s ``generator_from`` builds on meta through ``FSDP.build_module(factory,
  weights=FILE)`` and each rank's shards hold exactly the file's values (gathered after ``wrap``);
  a file of another shape is refused before anything is wrapped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
RECIPE = ROOT / "recipes" / "debug" / "gen_tiny.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_port()}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _recipe(path: Path, run_dir: Path) -> Path:
    """gen_tiny under FSDP with the recipe's (untrained) VQ-VAE as the image tokenizer, a sample grid
    at the generator's last step, VQA fine-tuning from it and a two-sample caption evaluation."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["run_dir"] = str(run_dir)
    recipe["strategy"] = {"class_path": "FSDP", "init_args": {"device": "cpu", "cpu_offload": True}}
    common = {"image_tokenizer_from": "recipe"}
    recipe["stages"] = [
        {"class_path": "FitTextTokenizer"},
        {
            "class_path": "TrainGenerator",
            "init_args": {
                **common,
                "sample_every": 2,
                "num_samples": 2,
                "trainer": {"steps": 2, "batch_size": 8, "lr": 0.003, "warmup_steps": 0, "log_every": 1},
            },
        },
        {
            "class_path": "FinetuneVQA",
            "init_args": {
                **common,
                "trainer": {"steps": 2, "batch_size": 8, "lr": 0.002, "warmup_steps": 0, "log_every": 1},
            },
        },
        {
            "class_path": "Evaluate",
            "init_args": {
                "metrics": ["caption"],
                "num_samples": 2,
                "batch_size": 2,
                "num_candidates": 1,
                "device": "cpu",
                "data": {"class_path": "ShapesDataset", "init_args": {"split": "test", "size": 2, "image_size": 32}},
            },
        },
    ]
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded_handoff")
    recipe = _recipe(tmp / "recipe.yaml", tmp / "run")
    proc = _torchrun(str(HERE / "trace_full_loads.py"), str(tmp), "run", str(recipe), "--debug")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    return tmp / "run", ranks


@pytest.mark.parametrize("stage", ["train_generator", "finetune_vqa"])
def test_weights_are_streamed_once_from_the_sharded_checkpoint(traced, stage):
    from vilgkit import artifacts, sharded
    from vilgkit.commands.export import find_checkpoints

    run, _ = traced
    folder = run / stage
    assert not (folder / "model.safetensors").exists()  # the weights are written once
    final = find_checkpoints(folder)[-1]
    expected = {
        k.removeprefix("generator."): v
        for k, v in sharded.consolidate_module(final, "model").items()
        if k.startswith("generator.")
    }
    got = artifacts.read_weights(folder / "generator.safetensors")  # verified against the run's manifest
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_no_rank_takes_a_full_copy_outside_evaluation(traced):
    run, (rank0, rank1) = traced
    for rank in (rank0, rank1):
        whats = [e["what"] for e in rank["events"]]
        assert "trained_module" not in whats, rank["events"]  # no plain trained copy on any rank
        built = [e for e in rank["events"] if e["what"] == "generator_built"]
        assert all(e["in_pipeline"] or e["in_callback_copy"] for e in built), built  # else always on meta
    assert rank1["events"] == []  # rank 1: no whole file read, no copy, no CPU-built generator
    loads = [e for e in rank0["events"] if e["what"] == "load_tensors"]
    assert loads and all(e["in_pipeline"] for e in loads), loads  # only Evaluate's Pipeline on rank 0
    copies = [e for e in rank0["events"] if e["what"] == "fresh"]
    assert [e["caller"] for e in copies] == ["_callback_module"]  # the sample grid's, once
    assert (run / "train_generator" / "samples" / "step_000002_images.png").is_file()
    assert (run / "evaluate").is_dir() and any((run / "evaluate").glob("*.json"))
    print(f"peak RSS per rank: {rank0['peak_rss'] / 2**20:.0f} MiB, {rank1['peak_rss'] / 2**20:.0f} MiB")


def test_generator_from_fills_the_shards_with_the_files_values(traced):
    from vilgkit import artifacts

    run, (rank0, _) = traced
    built = [e for e in rank0["events"] if e["what"] == "built_from_file"]
    saved = artifacts.tensor_shapes(run / "train_generator" / "generator.safetensors")
    assert len(built) == 1 and built[0]["keys"] == len(saved)  # FinetuneVQA's generator, built on meta
    assert built[0]["max_abs_diff"] == 0.0


def test_a_weights_file_that_does_not_fit_is_refused_before_wrapping(tmp_path):
    from vilgkit import artifacts
    from vilgkit.models.unified import UnifiedTransformer
    from vilgkit_parallel import FSDP
    from vilgkit_parallel.single import SingleDevice

    arch = dict(hidden_size=32, num_layers=2, num_heads=4, text_vocab_size=50, image_vocab_size=24, max_text_len=8)
    artifacts.save_weights(tmp_path / "w.safetensors", UnifiedTransformer(**{**arch, "hidden_size": 16}).state_dict())
    for strategy in (FSDP(device="cpu"), SingleDevice(device="cpu")):
        with pytest.raises(artifacts.ArtifactError, match="does not fit the UnifiedTransformer: shape changed"):
            strategy.build_module(lambda: UnifiedTransformer(**arch), weights=tmp_path / "w.safetensors")
