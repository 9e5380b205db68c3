"""FairScale's ``FullyShardedDataParallel`` with parameter and optimizer offload (CUDA only).

FairScale's FSDP uses CUDA streams even when parameters live on the CPU, so it cannot run on a
machine without CUDA: the strategy refuses at construction, and the plugin's
``vilgkit_recipe_loaded`` hook refuses a recipe naming it before anything is built. PyTorch's FSDP2
(:class:`~vilgkit_parallel.fsdp.FSDP`) is the portable choice; this strategy exists for parity with
the design card and for comparison on GPUs.

Checkpoints are consolidated on rank 0 (``safetensors`` for weights, JSON + safetensors for
optimizer and trainer state, a hashed marker written last), so they load on any world size.
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

        bf16 = self.compute_dtype == "bf16"
        return FullyShardedDataParallel(
            module,
            mixed_precision=bf16,
            compute_dtype=torch.bfloat16 if bf16 else torch.float32,
            fp32_reduce_scatter=bf16,
            flatten_parameters=False,  # keep parameter identity: optimizer groups stay valid
            move_params_to_cpu=self.offload,
            move_grads_to_cpu=self.offload,
            compute_device=self.device,
            state_dict_device=torch.device("cpu"),
        )

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
        self._wrapped = self._fsdp(model)
        return self._wrapped

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> torch.Tensor:
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
