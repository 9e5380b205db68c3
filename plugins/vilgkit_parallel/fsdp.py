"""Fully sharded data parallel on PyTorch's FSDP2 (``fully_shard``), full or hybrid.

Hybrid sharding is the paper's *group sharded data parallel* (§3.2.2, Fig. 3): model states are
sharded inside a shard group (a node) and replicated across groups, on a 2-D device mesh
``(replicate, shard)``. Combined with CPU offload (sharded fp32 master weights, gradients and
AdamW states live in host memory and the optimizer steps on the CPU), bf16 compute copies, per-block
recompute, and gradient accumulation that skips the reduce-scatter and the device→host gradient
copy on every micro-batch but the last.

``wrap`` applies, in this order (docs/architecture.md §4):

1. the model was built on ``meta`` (or on the CPU: both work),
2. activation checkpointing per block (``model.blocks()``),
3. ``torch.compile`` per block (optional),
4. ``fully_shard`` per block, then the root,
5. materialise (``to_empty``) and initialise (``model.init_weights()``, else ``reset_parameters``)
   when the model was on ``meta``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal

import torch
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

from vilgkit.registry import PARALLEL_STRATEGIES
from vilgkit_parallel import distributed as D
from vilgkit_parallel.activation import apply_activation_checkpointing, model_blocks
from vilgkit_parallel.common import DistributedStrategy
from vilgkit_parallel.materialize import materialize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Trainable / Generator methods that run the model outside ``forward`` (they must unshard too)
FORWARD_METHODS = ("training_losses", "validation_metrics", "text_log_likelihood")


@PARALLEL_STRATEGIES.register_module()
class FSDP(DistributedStrategy):
    """FSDP2 strategy.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        sharding: ``"full"`` shards over every rank; ``"hybrid"`` shards inside groups of
            ``shard_size`` ranks and replicates across groups.
        shard_size: ranks per shard group for hybrid sharding (default: ranks per node,
            ``LOCAL_WORLD_SIZE``).
        cpu_offload: keep sharded parameters, gradients and optimizer states in host memory
            (``CPUOffloadPolicy``); the optimizer steps on the CPU.
        param_dtype: dtype of the unsharded compute copy (``"bf16"``: mixed precision; master
            weights stay fp32).
        reduce_dtype: dtype of gradient reduction (fp32 keeps reductions exact).
        activation_checkpointing: ``"none"``, ``"full"`` or ``"selective"`` recompute per block.
        compile: ``torch.compile`` each block (needs a working compiler toolchain).
        reshard_after_forward: free unsharded parameters after each block's forward (ZeRO-3);
            ``False`` keeps them until backward (ZeRO-2-like: faster, more memory).
        timeout_s: collective timeout.
    """

    def __init__(
        self,
        device: str = "auto",
        sharding: Literal["full", "hybrid"] = "full",
        shard_size: int | None = None,
        cpu_offload: bool = False,
        param_dtype: Literal["fp32", "bf16"] = "fp32",
        reduce_dtype: Literal["fp32", "bf16"] = "fp32",
        activation_checkpointing: Literal["none", "full", "selective"] = "none",
        compile: bool = False,
        reshard_after_forward: bool = True,
        timeout_s: float = 1800.0,
    ) -> None:
        super().__init__(device=device, timeout_s=timeout_s)
        if sharding not in ("full", "hybrid"):
            raise ValueError(f"sharding must be 'full' or 'hybrid', got {sharding!r}")
        if param_dtype not in DTYPES or reduce_dtype not in DTYPES:
            raise ValueError(f"param_dtype/reduce_dtype must be one of {sorted(DTYPES)}")
        if activation_checkpointing not in ("none", "full", "selective"):
            raise ValueError(f"activation_checkpointing must be none|full|selective, got {activation_checkpointing!r}")
        if shard_size is not None and shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if shard_size is not None and sharding == "full":
            raise ValueError("shard_size only applies to sharding='hybrid'")
        self.sharding = sharding
        self.shard_size = shard_size
        self.cpu_offload = bool(cpu_offload)
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        self.activation_checkpointing = activation_checkpointing
        self.compile = bool(compile)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.mesh = None
        self._old_param_fqn: dict[int, str] = {}
        self._params_by_fqn: dict[str, nn.Parameter] = {}

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        return {"device": "cpu"}

    # ------------------------------------------------------------------ wrapping

    def mesh_shape(self) -> tuple[int, int]:
        """``(replicate, shard)`` for this launch."""
        world = self.world_size
        if self.sharding == "full":
            return (1, world)
        shard = self.shard_size or self.local_world_size
        if world % shard:
            raise ValueError(f"hybrid sharding: world size {world} is not a multiple of shard_size {shard}")
        return (world // shard, shard)

    def _build_mesh(self):
        if self.mesh is None:
            replicate, shard = self.mesh_shape()
            mesh = D.build_mesh(self.device, replicate, shard)
            self.mesh = mesh["shard"] if self.sharding == "full" else mesh
        return self.mesh

    def _policies(self) -> dict[str, Any]:
        mp = MixedPrecisionPolicy(
            param_dtype=None if self.param_dtype == "fp32" else DTYPES[self.param_dtype],
            reduce_dtype=DTYPES[self.reduce_dtype],
        )
        offload = CPUOffloadPolicy(pin_memory=self.device.type == "cuda") if self.cpu_offload else OffloadPolicy()
        return {"mesh": self._build_mesh(), "mp_policy": mp, "offload_policy": offload}

    def wrap(self, model: nn.Module) -> nn.Module:
        self.setup()
        on_meta = any(p.is_meta for p in model.parameters())
        if not on_meta:
            model.to(self.device)
        self._old_param_fqn = {id(p): n for n, p in model.named_parameters()}
        blocks = model_blocks(model)
        apply_activation_checkpointing(blocks, self.activation_checkpointing)
        if self.compile:
            for block in blocks:
                block.compile()
        policies = self._policies()
        for block in blocks:
            fully_shard(block, reshard_after_forward=self.reshard_after_forward, **policies)
        fully_shard(model, reshard_after_forward=self.reshard_after_forward, **policies)
        for name in FORWARD_METHODS:
            if callable(getattr(model, name, None)):
                register_fsdp_forward_method(model, name)
        if on_meta:
            materialize(model, param_device=torch.device("cpu") if self.cpu_offload else self.device,
                        buffer_device=self.device)
        self._params_by_fqn = dict(model.named_parameters())
        return model

    def build_module(self, factory: Any) -> nn.Module:
        """Build on ``meta``; :meth:`wrap` materialises and initialises only this rank's shards."""
        with torch.device("meta"):
            return factory()

    # ------------------------------------------------------------------ training

    def build_optimizer(self, params: list[Any], factory: Any) -> torch.optim.Optimizer:
        """Parameters collected before :meth:`wrap` are swapped for their sharded replacements."""
        current = {id(p) for p in self._params_by_fqn.values()}

        def fix(p: nn.Parameter) -> nn.Parameter:
            if id(p) in current or not self._params_by_fqn:
                return p
            fqn = self._old_param_fqn.get(id(p))
            if fqn is None:
                raise ValueError("build_optimizer got a parameter that is not part of the wrapped model")
            return self._params_by_fqn[fqn]

        fixed = [
            {**g, "params": [fix(p) for p in g["params"]]} if isinstance(g, dict) else fix(g) for g in params
        ]
        return factory(fixed)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Accumulate unsharded gradients locally: no reduce-scatter, no offload copy."""
        if not isinstance(model, FSDPModule):
            yield
            return
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    # ------------------------------------------------------------------ planning

    def layout(self):
        from vilgkit.interfaces import StrategyLayout

        return StrategyLayout(
            sharding=self.sharding,
            shard_size=self.shard_size,
            cpu_offload=self.cpu_offload,
            recompute=self.activation_checkpointing,
            param_dtype=self.param_dtype,
            reduce_dtype=self.reduce_dtype,
        )
