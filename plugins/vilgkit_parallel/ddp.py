"""Data parallel: every rank holds the whole model; gradients are averaged (torch DDP).

The engine's training pass is the wrapped module's call (``wrapped(batch, group, step)``, the
module's ``forward``), so DDP's own forward arms the gradient synchronisation: no routing needed.
"""

from __future__ import annotations

import contextlib

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vilgkit.interfaces import StrategyLayout
from vilgkit.registry import PARALLEL_STRATEGIES
from vilgkit_parallel.common import DistributedStrategy


@PARALLEL_STRATEGIES.register_module()
class DDP(DistributedStrategy):
    """Distributed data parallel over all ranks (gloo on CPU, NCCL on CUDA).

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        find_unused_parameters: needed when an optimizer group's loss leaves parameters unused
            (e.g. the autoencoder while the VQGAN discriminator steps).
        bucket_cap_mb: gradient all-reduce bucket size.
        timeout_s: collective timeout.
    """

    def __init__(
        self,
        device: str = "auto",
        find_unused_parameters: bool = False,
        bucket_cap_mb: float = 25.0,
        timeout_s: float = 1800.0,
    ) -> None:
        super().__init__(device=device, timeout_s=timeout_s)
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be positive, got {bucket_cap_mb}")
        self.find_unused_parameters = bool(find_unused_parameters)
        self.bucket_cap_mb = float(bucket_cap_mb)

    def wrap(self, model: nn.Module) -> nn.Module:
        self.setup()
        if any(p.is_meta for p in model.parameters()):
            raise ValueError("DDP replicates a materialised model: build it on the CPU, not on 'meta'")
        model = model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model,
            device_ids=ids,
            find_unused_parameters=self.find_unused_parameters,
            bucket_cap_mb=self.bucket_cap_mb,
        )

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()

    def layout(self) -> StrategyLayout:
        return StrategyLayout(sharding="none")
