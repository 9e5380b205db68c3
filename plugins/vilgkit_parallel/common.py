"""What the multi-process strategies share: process-group set-up, reductions, DCP checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vilgkit.interfaces import ParallelStrategy
from vilgkit_parallel import checkpoint as ckpt
from vilgkit_parallel import distributed as D


class DistributedStrategy(ParallelStrategy):
    """Base of DDP / FSDP: torchrun environment, process group, sharded (DCP) checkpoints.

    Args:
        device: ``"auto"`` (this rank's GPU when CUDA is present, else CPU), ``"cpu"`` or ``"cuda"``.
        timeout_s: collective timeout; a hung rank fails the job instead of waiting forever.
    """

    def __init__(self, device: str = "auto", timeout_s: float = 1800.0) -> None:
        self._env = D.launch_env()
        self.device = D.pick_device(device, self._env)
        self.timeout_s = float(timeout_s)
        self._ready = False

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else self._env.rank

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else self._env.world_size

    @property
    def local_world_size(self) -> int:
        return self._env.local_world_size

    def setup(self) -> None:
        if not self._ready:
            D.init_process_group(self.device, self.timeout_s)
            self._ready = True

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        self.setup()
        return D.all_reduce_mean(value)

    def barrier(self) -> None:
        self.setup()
        D.barrier()

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside whatever wrapper :meth:`wrap` returned."""
        return model

    def save_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        self.setup()
        ckpt.save(Path(directory), state, self.unwrap)

    def load_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        self.setup()
        ckpt.load(Path(directory), state, self.unwrap)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        self.setup()
        return ckpt.full_state_dict(self.unwrap(model))

    def memory_plan(self, model: nn.Module, tokens_per_device: int):
        """Per-device estimate for this launch (see :mod:`vilgkit.planning`)."""
        from vilgkit.planning import estimate_memory

        nodes = max(1, self.world_size // max(1, self.local_world_size))
        return estimate_memory(
            model, self.layout(), tokens_per_device, nodes=nodes, gpus_per_node=max(1, self.local_world_size)
        )
