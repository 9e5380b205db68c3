"""FairScale's ``FullyShardedDataParallel`` with parameter and optimizer offload (CUDA only).

FairScale's FSDP uses CUDA streams even when parameters live on the CPU, so it cannot run on a
machine without CUDA: the strategy refuses at construction, and the plugin's
``vilgkit_recipe_loaded`` hook refuses a recipe naming it before anything is built. PyTorch's FSDP2
(:class:`~vilgkit_parallel.fsdp.FSDP`) is the portable choice; this strategy exists for parity with
the design card and for comparison on GPUs.

Checkpoints are consolidated on rank 0 (``safetensors`` for weights, JSON + safetensors for
optimizer and trainer state, a hashed marker written last), so they load on any world size.

Work-arounds for FairScale 0.4.13 (see ``docs/distributed.md``, FairScale section; not yet verified
on a GPU):

* with ``mixed_precision=True`` the root casts every fp32 input to **fp16**, whatever its
  ``compute_dtype``; a forward pre-hook on the root casts fp32 inputs to the compute dtype first
  (bf16), so FairScale's cast finds nothing to do;
* every output tensor of the root that needs a gradient gets a pre-backward hook; when one fires
  after a root parameter's gradient is already reduced, ``_use_full_params`` fails its
  ``assert self.has_full_params``. A forward hook on the wrapped module detaches every entry of a
  training-loss dict but ``"loss"`` (the only one the trainer backpropagates), FairScale's own advice.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from vilgkit import sharded
from vilgkit.errors import RecipeError
from vilgkit.registry import PARALLEL_STRATEGIES
from vilgkit_parallel import checkpoint as ckpt
from vilgkit_parallel import safe_state
from vilgkit_parallel.activation import model_blocks
from vilgkit_parallel.common import DistributedStrategy

MARKER = "vilgkit_full.json"
NO_CUDA = "FairScaleFSDP needs CUDA (FairScale's FSDP uses CUDA streams even with CPU offload); use FSDP instead"


def fsdp_kwargs(compute_dtype: str, offload: bool, device: torch.device) -> dict[str, Any]:
    """FairScale ``FullyShardedDataParallel`` arguments for every wrapper (the blocks and the root).

    ``"bf16"``: mixed precision with ``compute_dtype=torch.bfloat16`` (FairScale's default under
    ``mixed_precision=True`` is fp16), fp32 master shards, fp32 reduce-scatter. ``"fp32"``: full
    precision. Buffers stay fp32 in both, as FSDP2 leaves them (FairScale's default casts them to the
    compute dtype, and EMA codebook statistics and usage counts would lose precision in bf16).
    ``flatten_parameters=False`` keeps parameter identity, so optimizer groups stay valid.
    """
    if compute_dtype not in ("fp32", "bf16"):
        raise ValueError(f"compute_dtype must be 'fp32' or 'bf16', got {compute_dtype!r}")
    bf16 = compute_dtype == "bf16"
    return dict(
        mixed_precision=bf16,
        compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        buffer_dtype=torch.float32,
        fp32_reduce_scatter=bf16,
        flatten_parameters=False,
        move_params_to_cpu=bool(offload),
        move_grads_to_cpu=bool(offload),
        compute_device=torch.device(device),
        state_dict_device=torch.device("cpu"),
    )


def cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every fp32 tensor in it (also inside dicts, lists and tuples) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.dtype == torch.float32 else value
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


def detach_side_outputs(output: Any) -> Any:
    """A training-loss dict with every tensor but ``"loss"`` detached (anything else unchanged).

    The trainer backpropagates ``"loss"`` only; the other entries are logged. FairScale registers a
    pre-backward hook on every output tensor of the root that needs a gradient, and a hook that fires
    after a root parameter's post-backward hook ends in ``AssertionError`` in ``_use_full_params``.
    """
    if not isinstance(output, dict) or "loss" not in output:
        return output
    return {k: v.detach() if k != "loss" and isinstance(v, torch.Tensor) else v for k, v in output.items()}


def check_recipe(recipe: dict[str, Any], path: str) -> None:
    """Refuse a recipe that names FairScaleFSDP on a machine without CUDA."""
    node = recipe.get("strategy") or {}
    if str(node.get("class_path", "")).endswith(".FairScaleFSDP") and not torch.cuda.is_available():
        raise RecipeError(f"{path}: strategy.class_path: {NO_CUDA}")


@PARALLEL_STRATEGIES.register_module()
class FairScaleFSDP(DistributedStrategy):
    """FairScale FSDP (ZeRO-3) with CPU offload of fp32 parameters, gradients and optimizer steps.

    Args:
        offload: keep fp32 master parameters and gradients on the CPU (the optimizer steps there).
        compute_dtype: ``"bf16"`` or ``"fp32"`` for the unsharded compute copy.
        activation_checkpointing: ``"none"`` or ``"full"`` recompute per block.
        timeout_s: collective timeout.
        device: ``"cuda"`` (this rank's GPU), ``"cuda:N"`` or ``"auto"``; accepted so that a recipe
            switches between ``FSDP`` and this strategy with the same ``device`` argument. The CPU is
            refused (FairScale's FSDP needs CUDA).
    """

    def __init__(
        self,
        offload: bool = True,
        compute_dtype: Literal["fp32", "bf16"] = "bf16",
        activation_checkpointing: Literal["none", "full"] = "none",
        timeout_s: float = 1800.0,
        device: str = "cuda",
    ) -> None:
        if device not in ("auto", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"FairScaleFSDP runs on CUDA only: device must be 'cuda', 'cuda:N' or 'auto', got {device!r}")
        if not torch.cuda.is_available():
            raise RuntimeError(NO_CUDA)
        if compute_dtype not in ("fp32", "bf16"):
            raise ValueError(f"compute_dtype must be 'fp32' or 'bf16', got {compute_dtype!r}")
        if activation_checkpointing not in ("none", "full"):
            raise ValueError("FairScaleFSDP supports activation_checkpointing 'none' or 'full'")
        super().__init__(device="cuda" if device == "auto" else device, timeout_s=timeout_s)
        self.offload = bool(offload)
        self.compute_dtype = compute_dtype
        self.activation_checkpointing = activation_checkpointing
        self._wrapped: nn.Module | None = None

    def _fsdp(self, module: nn.Module) -> nn.Module:
        from fairscale.nn.data_parallel import FullyShardedDataParallel

        return FullyShardedDataParallel(module, **fsdp_kwargs(self.compute_dtype, self.offload, self.device))

    def wrap(self, model: nn.Module) -> nn.Module:
        from fairscale.nn.checkpoint import checkpoint_wrapper

        self.setup()
        if any(p.is_meta for p in model.parameters()):
            raise ValueError("FairScaleFSDP needs a materialised model (build it on the CPU, not on 'meta')")
        if not self.offload:
            model.to(self.device)
        else:
            for module in model.modules():  # buffers are not managed by FSDP: they live on the GPU
                for name, buf in list(module._buffers.items()):
                    if buf is not None:
                        module._buffers[name] = buf.to(self.device)
        parents = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
        for block in model_blocks(model):
            if self.activation_checkpointing == "full":
                checkpoint_wrapper(block)  # patches block.forward; parameter names are unchanged
            parent, name = parents[id(block)]
            parent._modules[name] = self._fsdp(block)
        model.register_forward_hook(lambda _module, _args, output: detach_side_outputs(output))
        self._wrapped = root = self._fsdp(model)
        if self.compute_dtype == "bf16":  # before FairScale's own cast of the root's fp32 inputs to fp16
            root.register_forward_pre_hook(
                lambda _module, args, kwargs: (cast_floats(args, torch.bfloat16), cast_floats(kwargs, torch.bfloat16)),
                with_kwargs=True,
            )
        return root

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

    def clip_grad_norm_(self, model: nn.Module, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """FairScale's own ``clip_grad_norm_``: the norm over every rank's gradient shards (the torch
        function would return this rank's partial norm). It clips every gradient of the module, so
        gradients outside ``params`` (another optimizer group's parameters that this group's loss
        reached; the trainer zeroes them before that group's backward anyway) are dropped first and
        the norm is the group's, as on one device. The parameters are the module's own objects
        (``flatten_parameters=False``)."""
        keep = {id(p) for p in params}
        for p in model.parameters():
            if p.grad is not None and id(p) not in keep:
                p.grad = None
        return model.clip_grad_norm_(max_norm)

    def layout(self):
        return self.layout_for(self.offload, self.compute_dtype, self.activation_checkpointing)

    @staticmethod
    def layout_for(offload: bool = True, compute_dtype: str = "bf16", activation_checkpointing: str = "none", **_: Any):
        """The layout from init args alone (``vilgkit plan`` on a machine without CUDA)."""
        from vilgkit.planning import StrategyLayout

        return StrategyLayout(sharding="full", cpu_offload=offload, recompute=activation_checkpointing,
                              param_dtype=compute_dtype, reduce_dtype="fp32")

    # ------------------------------------------------------------------ checkpoints (consolidated)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def save_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        directory = Path(directory)
        rank = dist.get_rank()
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / MARKER).unlink(missing_ok=True)
        dist.barrier()
        modules, optims, others = ckpt._split(state, self.unwrap)
        weights = {name: self.state_dict(m) for name, m in modules.items()}  # collective
        owners = {name: ckpt._owner(opt, modules) for name, opt in optims.items()}
        optim = {name: owners[name].gather_full_optim_state_dict(opt) for name, opt in optims.items()}  # collective
        safe_state.save(directory / f"rank{rank}", {n: ckpt._plain(v) for n, (_, v) in others.items()})
        if rank == 0:
            from safetensors.torch import save_file

            for name, sd in weights.items():
                save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / f"{name}.safetensors"))
            safe_state.save(directory / "optimizers", optim)
        dist.barrier()
        if rank == 0:
            files = {p.name: sharded.sha256_file(p) for p in directory.iterdir() if p.is_file() and p.name != MARKER}
            sharded.write_json_atomic(directory / MARKER, {"format": "vilgkit-full-1", "files": files,
                                                           "world_size": dist.get_world_size()})
        dist.barrier()

    def load_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        directory = Path(directory)
        marker = json.loads((directory / MARKER).read_text())
        for name, digest in marker["files"].items():
            if sharded.sha256_file(directory / name) != digest:
                raise sharded.CheckpointIntegrityError(f"{directory}: {name} does not match its hash")
        modules, optims, others = ckpt._split(state, self.unwrap)
        for name, module in modules.items():
            module.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
        optim = safe_state.load(directory / "optimizers")
        for name, opt in optims.items():
            owner = ckpt._owner(opt, modules)
            opt.load_state_dict(owner.get_shard_from_optim_state_dict(optim[name]))
        local = safe_state.load(directory / f"rank{dist.get_rank() % int(marker['world_size'])}")
        for name, (path, target) in others.items():
            ckpt._restore(state, path, target, local[name])
