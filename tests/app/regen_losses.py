"""Re-record the reference loss curve of ``recipes/debug/gen_tiny.yaml`` (single-threaded CPU).

    python tests/app/regen_losses.py

Run this only after an intended change to the model, the data or the training loop, and say so in
the change description: ``test_each_direction_is_logged_and_matches_reference_curve`` compares
every logged loss against this file.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

if __name__ == "__main__":
    import torch
    from test_end_to_end import _losses

    from vilgkit.engine.runner import run

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run([str(HERE.parents[1] / "recipes" / "debug" / "gen_tiny.yaml")], ["--run_dir", tmp])
        ref = {s: _losses(Path(tmp) / s / "metrics.jsonl") for s in ("train_generator", "finetune_vqa")}
    (HERE / "assets" / "gen_tiny_losses.json").write_text(json.dumps(ref, indent=1))
    print(json.dumps(ref, indent=1))
