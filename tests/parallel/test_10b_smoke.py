"""The 10B recipe through ``vilgkit run`` itself, at full width (4096 hidden, 64 heads, the sparse
11x11 schedule, 8192 codes) with 2 layers (recipes/debug/ernievilg_10b_smoke.yaml), on 2 CPU ranks
with gloo under the recipe's own strategy (FSDP hybrid + CPU offload + full recompute + bf16): every
stage (training on code shards written by ``vilgkit tokenize``, a tiny evaluation), then
``vilgkit export`` and a single-process ``Pipeline``. About 5 to 10 minutes on 2 cores and about 6 GiB
per rank (docs/distributed.md): the suite's one full-width run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
RECIPE, SMOKE = "recipes/ernievilg_10b.yaml", "recipes/debug/ernievilg_10b_smoke.yaml"


def _losses(path: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in path.read_text().splitlines() if key in json.loads(line)]


def test_10b_smoke_runs_every_stage_and_exports_for_one_process(tmp_path):
    from vilgkit.testing.smoke_10b import build_smoke_data
    from vilgkit.testing.torchrun import run_torchrun

    run, out = tmp_path / "run", tmp_path / "export"
    overrides = build_smoke_data(tmp_path / "data")  # tars, vocab.txt, taming checkpoint, code shards
    proc = run_torchrun("-m", "vilgkit", "run", RECIPE, "--config", SMOKE, *overrides, "--run_dir", run, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    generator = _losses(run / "train_generator" / "metrics.jsonl", "loss")
    assert len(generator) == 2 and all(math.isfinite(v) for v in generator) and generator[1] < generator[0]
    assert (run / "evaluate" / "eval.json").is_file()

    from vilgkit.cli import main

    assert main(["export", str(run), "--stage", "train_generator", "--out", str(out)]) == 0
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(out, device="cpu")
    assert pipe.generator.hidden_size == 4096 and pipe.generator.num_heads == 64 and pipe.generator.num_layers == 2
    assert all(not p.is_meta for p in pipe.generator.parameters())
