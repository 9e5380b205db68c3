"""``benchmarks/bench_generator.py --quick`` runs every section and prints the table (a smoke test of the script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_generator_quick_prints_every_row(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VILGKIT_DISPATCH": "defaults"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_generator.py"),
            "--quick",
            "--json",
            str(tmp_path / "gen.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    ).stdout
    table = out[out.index("| figure |") :]
    for row in (
        "GEMM peak",
        "read bandwidth",
        "training step bf16, sparse schedule",
        "batch 1, fp32, dense",
        "8×8, batch 2: dense / sparse",
        "best of 60",
    ):
        assert row in table, row
    result = json.loads((tmp_path / "gen.json").read_text())
    assert result["runs"][0]["dispatch"]["gemv_few"] == "split"  # the environment's defaults were used
    assert 0 < result["runs"][0]["best_of_8"]["rerank_share_of_sampling"]
