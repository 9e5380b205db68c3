"""Run by ``torchrun`` from ``test_sharded_handoff.py``: a small UnifiedTransformer built by
``FSDP.build_module(factory, weights=FILE)`` on meta, each rank filling its shards from the file,
against the file itself after consolidation.

    torchrun --nproc-per-node 2 tests/parallel/build_from_file_worker.py WEIGHTS OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vilgkit.artifacts import load_tensors
from vilgkit.models.unified import UnifiedTransformer
from vilgkit_parallel import FSDP

#: the architecture the test process saved the weights of
ARCH = dict(
    hidden_size=32, num_layers=2, num_heads=4, text_vocab_size=50, image_vocab_size=24, max_text_len=8, max_image_grid=4
)


def main() -> None:
    weights, out = Path(sys.argv[1]), Path(sys.argv[2])
    strategy = FSDP(device="cpu", sharding="full", cpu_offload=True, param_dtype="bf16")
    strategy.setup()
    torch.manual_seed(123)  # another seed than the saved weights': values must come from the file
    model = strategy.build_module(lambda: UnifiedTransformer(**ARCH), weights=weights)
    on_meta = all(p.is_meta for p in model.parameters())
    model = strategy.wrap(model)
    local = sum(p.to_local().numel() for p in model.parameters())
    full = strategy.state_dict(model)  # complete on rank 0
    if dist.get_rank() == 0:
        saved = load_tensors(weights)
        persistent = model.state_dict().keys()
        result = {
            "on_meta": on_meta,
            "keys_same": sorted(full) == sorted(saved) == sorted(persistent),
            "max_abs_diff": max(float((full[k] - v).abs().max()) for k, v in saved.items()),
            "local_params": local,
            "params": sum(v.numel() for v in saved.values()),
        }
        out.write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
