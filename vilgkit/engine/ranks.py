"""Which process writes, and where all processes wait: the helpers a stage needs under ``torchrun``.

Outside a launcher (one process) the main process is the only one and barriers are no-ops.
"""

from __future__ import annotations

import os

from vilgkit.interfaces import RunContext


def is_main_process() -> bool:
    """True on the rank that writes shared files and evaluates: rank 0 of the process group, or of
    the launcher's environment (``RANK``) before any group exists; True without a launcher."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def stage_barrier(ctx: RunContext) -> None:
    """Every rank waits here until all have finished the stage, so none starts the next one before
    the main rank has written what it reads (weights, manifests); a no-op in a single process.

    The recipe's strategy provides the barrier (it sets the process group up when needed); without
    one, the default process group is used when it exists.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return
    if "strategy" in ctx.components:
        ctx.components["strategy"].barrier()
    elif dist.is_available() and dist.is_initialized():
        dist.barrier()
