"""A main-rank callback on a sharded module gets a gathered plain copy only when the main rank's host
has room for it now (``recipe_plan.full_copy_fits``); otherwise it is skipped with one warning.

One FSDP process (gloo, a world of 1: FSDP2 shards in place there too) in a subprocess, so that the
test process never holds a process group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    from vilgkit import recipe_plan
    from vilgkit.engine.config import TrainerConfig
    from vilgkit.engine.trainer import Trainer
    from vilgkit_engine_toy import ToyRegression, ToyRegressionData
    from vilgkit_parallel import FSDP

    fits = sys.argv[2] == "fits"
    recipe_plan.full_copy_fits = lambda nbytes: fits
    seen = []

    class Probe:
        every = 1

        def __call__(self, step, module, out_dir):
            seen.append([step, type(module).__name__, any(type(p).__name__ == "DTensor" for p in module.parameters())])

    cfg = TrainerConfig(steps=2, batch_size=8, lr=0.01, warmup_steps=0, log_every=1)
    trainer = Trainer(ToyRegression(4), ToyRegressionData(32), sys.argv[1], FSDP(device="cpu"), cfg,
                      callbacks=[Probe()], progress=False, tensorboard=False, rebuild=lambda: ToyRegression(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit()
    skipped = [str(w.message) for w in caught if "callbacks skipped" in str(w.message)]
    print(json.dumps({"seen": seen, "skipped": skipped}))
""")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fits", [True, False])
def test_the_callback_copy_is_taken_only_where_it_fits(tmp_path, fits):
    support = str(ROOT / "tests" / "engine" / "support")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "PYTHONPATH": os.pathsep.join([support, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "out"), "fits" if fits else "no"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if fits:  # a plain copy (no DTensor) at every step
        assert result["seen"] == [[1, "ToyRegression", False], [2, "ToyRegression", False]] and not result["skipped"]
    else:  # never called, said once
        assert result["seen"] == [] and len(result["skipped"]) == 1
        assert "does not fit the main rank's host memory" in result["skipped"][0]
