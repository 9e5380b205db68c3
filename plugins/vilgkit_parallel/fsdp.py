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
5. materialise (``to_empty``) when the model was on ``meta`` and fill this rank's shards: from the
   weights file :meth:`FSDP.build_module` was given (``weights=``, read one tensor at a time), with
   the values a CPU build would have given for what the file does not hold (replayed one tensor at
   a time, :mod:`vilgkit_parallel.meta_init`), else through the model's ``init_weights()``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from vilgkit import artifacts
from vilgkit.registry import PARALLEL_STRATEGIES
from vilgkit.tensor_file import TensorFile
from vilgkit_parallel import distributed as D
from vilgkit_parallel.activation import apply_activation_checkpointing, model_blocks, model_root
from vilgkit_parallel.common import DistributedStrategy
from vilgkit_parallel.materialize import fill_shards, materialize
from vilgkit_parallel.meta_init import InitRecorder, build_on_meta

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


#: a weights file given to :meth:`FSDP.build_module` and ``id(tensor) → its key in the file`` for
#: the tensors of the module it was built for
_Source = tuple[TensorFile, dict[int, str]]


def _full_value(
    name: str, original: torch.Tensor, recorders: list[InitRecorder], sources: list[_Source] = ()
) -> torch.Tensor:
    """The full CPU value of a tensor of the model as it was before sharding: read from the weights
    file :meth:`FSDP.build_module` was given, else replayed when it was built on meta by
    :meth:`FSDP.build_module`, its own values when it was built on the CPU."""
    for source, keys in sources:
        if id(original) in keys:
            return source.tensor(keys[id(original)])
    if not original.is_meta:
        return original.detach().cpu()
    for recorder in recorders:
        if recorder.knows(original):
            return recorder.value(original)
    raise ValueError(f"{name} is on meta but was not built by FSDP.build_module: its values are unknown")


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
        # weak: once a stage lets go of its trained module, the strategy must not keep its shards alive
        self._params_by_fqn: weakref.WeakValueDictionary[str, nn.Parameter] = weakref.WeakValueDictionary()
        self._recorders: dict[int, InitRecorder] = {}  # id(module) → how build_module built it
        self._sources: dict[int, _Source] = {}  # id(module) → the weights file build_module was given

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
        originals = {**dict(model.named_parameters()), **dict(model.named_buffers())}  # before sharding
        blocks = model_blocks(model)
        apply_activation_checkpointing(blocks, self.activation_checkpointing)
        if self.compile:
            for block in blocks:
                block.compile()
        policies = self._policies()
        full_precision = getattr(model_root(model), "full_precision_modules", None)
        for module in full_precision() if callable(full_precision) else []:  # e.g. VQGAN's codebook
            # fp32 compute copies; kept gathered after forward (small), as the model reads them right after
            fp32 = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
            fully_shard(module, reshard_after_forward=False, **{**policies, "mp_policy": fp32})
        for block in blocks:
            fully_shard(block, reshard_after_forward=self.reshard_after_forward, **policies)
        fully_shard(model, reshard_after_forward=self.reshard_after_forward, **policies)
        param_device = torch.device("cpu") if self.cpu_offload else self.device
        recorders = [self._recorders.pop(id(m)) for m in model.modules() if id(m) in self._recorders]
        sources = [self._sources.pop(id(m)) for m in model.modules() if id(m) in self._sources]
        if on_meta and (recorders or sources):
            fill_shards(
                model,
                lambda name: _full_value(name, originals[name], recorders, sources),
                param_device,
                self.device,
            )
        elif on_meta:
            materialize(model, param_device=param_device, buffer_device=self.device)
        self._params_by_fqn = weakref.WeakValueDictionary(dict(model.named_parameters()))
        return model

    def build_module(self, factory: Any, weights: str | Path | None = None) -> nn.Module:
        """Build on ``meta``; :meth:`wrap` then materialises this rank's shards with the values a CPU
        build would have given (and the RNG continues as after a CPU build).

        With ``weights`` (a safetensors file of the module's state dict) the file is verified and
        its keys and shapes checked now; :meth:`wrap` reads it one tensor at a time and each rank
        keeps its shard (tensors the file does not hold, e.g. non-persistent buffers, are replayed).
        A module ``factory`` returns already built off ``meta`` loads the file as it is.
        """
        module, recorder = build_on_meta(factory)
        self._recorders[id(module)] = recorder
        if weights is None:
            return module
        source = TensorFile(weights)
        source.check(module)
        state = module.state_dict(keep_vars=True)
        if not any(t.is_meta for t in state.values()):
            artifacts.load_weights(module, weights)
            return module
        self._sources[id(module)] = (source, {id(t): key for key, t in reversed(state.items())})
        return module

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

        fixed = [{**g, "params": [fix(p) for p in g["params"]]} if isinstance(g, dict) else fix(g) for g in params]
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
