"""The toy run of the end-to-end run-directory and resume tests: its recipe, ``vilgkit run`` as a
subprocess, and what the tests read back (``support/vilgkit_engine_toy.py`` holds the stage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from vilgkit.engine.checkpoint import load_tensors
from vilgkit.engine.runner import run
from vilgkit.testing.tiny import CPU_STRATEGY

SUPPORT = Path(__file__).parent / "support"
ROOT = Path(__file__).resolve().parents[2]


def toy_recipe(
    tmp_path: Path,
    run_dir: Path,
    *,
    name: str = "toy",
    steps: int = 12,
    delay: float = 0.0,
    hidden: int = 16,
    vocab: int = 120,
    tokenizer: bool = False,
) -> Path:
    """Writes ``tmp_path/<name>.yaml``: the TrainToy stage, checkpoints every 3 steps (2 kept), seed 11;
    with ``tokenizer`` a FitTextTokenizer stage first (one that writes files without checkpoints)."""
    trainer = {
        "steps": steps,
        "batch_size": 8,
        "grad_accum": 2,
        "lr": 0.01,
        "warmup_steps": 3,
        "checkpoint_every": 3,
        "keep_checkpoints": 2,
        "log_every": 1,
    }
    toy = {"dim": 4, "hidden": hidden, "dropout": 0.2, "delay": delay, "trainer": trainer}
    doc = {
        "run_dir": str(run_dir),
        "seed": 11,
        "data": {"class_path": "vilgkit_engine_toy.ToyRegressionData", "init_args": {"size": 96, "dim": 4}},
        "strategy": CPU_STRATEGY,
        "stages": [{"class_path": "vilgkit_engine_toy.TrainToy", "init_args": toy}],
    }
    if tokenizer:
        doc["text_tokenizer"] = {"class_path": "WordPieceTokenizer", "init_args": {"vocab_size": vocab}}
        shapes = {"class_path": "ShapesDataset", "init_args": {"size": 24, "image_size": 16}}
        doc["stages"].insert(0, {"class_path": "FitTextTokenizer", "init_args": {"data": shapes}})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def launch(path: Path, *extra: str, env_extra: dict | None = None, merge_stderr: bool = False) -> subprocess.Popen:
    """``python -m vilgkit run PATH EXTRA...`` on one thread with the toy plugin importable;
    ``merge_stderr`` sends stderr into stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **(env_extra or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "vilgkit", "run", str(path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
    )


def reference_weights(tmp: Path) -> dict[str, torch.Tensor]:
    """The uninterrupted 12-step toy run, in this process on one thread like the subprocesses (same
    kernels, same order of operations: bit-identical results on the same machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run([str(toy_recipe(tmp, tmp / "ref"))])
    finally:
        torch.set_num_threads(threads)
    return weights(tmp / "ref")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The trained toy model's weights."""
    return load_tensors(Path(run_dir) / "train_toy" / "model.safetensors")


def metric_steps(run_dir: Path) -> list[int]:
    """The steps of the toy stage's metric lines, in file order."""
    return [json.loads(x)["step"] for x in (Path(run_dir) / "train_toy" / "metrics.jsonl").read_text().splitlines()]


def assert_identical(a: dict, b: dict) -> None:
    """Two state dicts with the same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
