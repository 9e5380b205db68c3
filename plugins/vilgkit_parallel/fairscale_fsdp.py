"""FairScale's ``FullyShardedDataParallel`` with parameter and optimizer offload (CUDA only).

FairScale's FSDP uses CUDA streams even when parameters live on the CPU, so it cannot run on a
machine without CUDA: the strategy refuses at construction, and the plugin's
``vilgkit_recipe_loaded`` hook refuses a recipe naming it before anything is built. PyTorch's FSDP2
(:class:`~vilgkit_parallel.fsdp.FSDP`) is the portable choice; this strategy exists for parity with
the design card and for comparison on GPUs.

Checkpoints: the weights are consolidated on rank 0 (``safetensors``); optimizer states are saved
per rank (JSON + safetensors, each rank its own shard), since FairScale consolidates optimizer state
only for flattened parameters and this strategy keeps them unflattened (parameter identity, so
optimizer groups stay valid). A hashed marker is written last. Weights and exports load on any world
size; resuming training needs the world size that saved (refused otherwise, with the reason).

Work-arounds for FairScale 0.4.13 (see ``docs/distributed.md``, FairScale section):

* with ``mixed_precision=True`` the root casts every fp32 input to **fp16**, whatever its
  ``compute_dtype``; a forward pre-hook on the root casts fp32 inputs to the compute dtype first
  (bf16), so FairScale's cast finds nothing to do;
* every output tensor of the root that needs a gradient gets a pre-backward hook; when one fires
  after a root parameter's gradient is already reduced, ``_use_full_params`` fails its
  ``assert self.has_full_params``. A forward hook on the wrapped module detaches every entry of a
  training-loss dict but ``"loss"`` (the only one the trainer backpropagates), FairScale's own advice;
* a parameter of the root (outside the transformer blocks) that a backward never reaches stays
  gathered on the GPU, and with offload ``_wait_for_post_backward`` fails ("WFPB: incorrect cpu_grad
  device"): FairScale frees such lingering parameters for nested wrappers only. VQA fine-tuning
  never uses the image head, a one-direction run one of the two heads. The same forward hook adds
  ``0 * p[0]`` of every trainable root parameter to ``"loss"`` (same value), so every root
  parameter gets its gradient and its hook fires; ``clip_grad_norm_`` then sets to ``None`` each
  root gradient that is exactly zero on every rank, so the optimizer skips an unused parameter as
  on one device (where its gradient is ``None``). The one difference: a *used* root parameter whose
  whole gradient is exactly zero is skipped too (one device would still apply weight decay);
* FairScale's own reentrant ``checkpoint_wrapper`` left the blocks' post-backward hooks unfired on
  PyTorch 2.11 ("expected to be in states BACKWARD_POST"); recompute uses PyTorch's non-reentrant
  checkpoint on the block instance instead (``activation.apply_activation_checkpointing``);
* gradient accumulation: with offload, FairScale keeps only the last micro-batch's gradient unless
  ``no_sync`` is used (``_cpu_grad.copy_`` overwrites), and under ``compute_dtype: bf16`` ``no_sync``
  fails (``setStorage: … storage of size 0``). fp32 accumulates correctly through ``no_sync``; bf16 with
  ``grad_accum > 1`` is refused (recipe validation and ``no_sync``).

Run on one H200 (PyTorch 2.11, FairScale 0.4.13, one rank; ``docs/distributed.md``, GPU results);
the all-zero rule for unused root parameters is tested on the CPU only.
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
from vilgkit_parallel.activation import apply_activation_checkpointing, model_blocks
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


BF16_ACCUM = (
    "FairScaleFSDP with compute_dtype 'bf16' cannot accumulate gradients over micro-batches "
    "(FairScale 0.4.13 fails inside no_sync under mixed precision, and without it offloaded "
    "gradients keep only the last micro-batch): use grad_accum 1, compute_dtype 'fp32', or FSDP"
)


def check_recipe(recipe: dict[str, Any], path: str) -> None:
    """Refuse a recipe that names FairScaleFSDP on a machine without CUDA, or with bf16 compute and
    gradient accumulation (see :data:`BF16_ACCUM`)."""
    node = recipe.get("strategy") or {}
    if not str(node.get("class_path", "")).endswith("FairScaleFSDP"):
        return
    if not torch.cuda.is_available():
        raise RecipeError(f"{path}: strategy.class_path: {NO_CUDA}")
    if (node.get("init_args") or {}).get("compute_dtype", "bf16") != "bf16":
        return
    for i, stage in enumerate(recipe.get("stages") or []):
        trainer = ((stage or {}).get("init_args") or {}).get("trainer") or {}
        if int(trainer.get("grad_accum", 1)) > 1:
            raise RecipeError(f"{path}: stages[{i}].init_args.trainer.grad_accum: {BF16_ACCUM}")


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
            raise ValueError(
                f"FairScaleFSDP runs on CUDA only: device must be 'cuda', 'cuda:N' or 'auto', got {device!r}"
            )
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
        self._root_params: list[nn.Parameter] = []

    def _fsdp(self, module: nn.Module) -> nn.Module:
        from fairscale.nn.data_parallel import FullyShardedDataParallel

        return FullyShardedDataParallel(module, **fsdp_kwargs(self.compute_dtype, self.offload, self.device))

    def wrap(self, model: nn.Module) -> nn.Module:
        self.setup()
        if any(p.is_meta for p in model.parameters()):
            raise ValueError("FairScaleFSDP needs a materialised model (build it on the CPU, not on 'meta')")
        if not self.offload:
            model.to(self.device)
        else:
            # FairScale asserts that offloaded parameters start on the CPU; a model handed over from an
            # earlier stage (``trained_module()``) lives on the strategy's device
            model.to("cpu")
            for module in model.modules():  # buffers are not managed by FSDP: they live on the GPU
                for name, buf in list(module._buffers.items()):
                    if buf is not None:
                        module._buffers[name] = buf.to(self.device)
        parents = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
        blocks = model_blocks(model)
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        self._root_params = [p for p in model.parameters() if id(p) not in in_blocks]
        # PyTorch's non-reentrant recompute, patched on the block instance (names unchanged), inside
        # each block's FairScale wrapper. FairScale's own reentrant checkpoint_wrapper left the
        # blocks' post-backward hooks unfired on PyTorch 2.11 ("expected BACKWARD_POST").
        apply_activation_checkpointing(blocks, self.activation_checkpointing)
        for block in blocks:
            parent, name = parents[id(block)]
            parent._modules[name] = self._fsdp(block)
        model.register_forward_hook(lambda _module, _args, output: self._reach_root_params(detach_side_outputs(output)))
        self._wrapped = root = self._fsdp(model)
        if self.compute_dtype == "bf16":  # before FairScale's own cast of the root's fp32 inputs to fp16
            root.register_forward_pre_hook(
                lambda _module, args, kwargs: (cast_floats(args, torch.bfloat16), cast_floats(kwargs, torch.bfloat16)),
                with_kwargs=True,
            )
        return root

    def _reach_root_params(self, output: Any) -> Any:
        """A training-loss dict whose ``"loss"`` reaches every trainable root parameter: ``+ 0 * p[0]``
        for each (one element, so a large bf16 sum cannot overflow into ``0 * inf``)."""
        loss = output.get("loss") if isinstance(output, dict) else None
        if not (torch.is_grad_enabled() and isinstance(loss, torch.Tensor) and loss.requires_grad):
            return output
        touch = [p.reshape(-1)[0] for p in self._root_params if p.requires_grad and p.numel()]
        if not touch:
            return output
        return {**output, "loss": loss + torch.stack([t.float() for t in touch]).sum() * 0.0}

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        if self.compute_dtype == "bf16":
            raise RuntimeError(BF16_ACCUM)
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

    def clip_grad_norm_(self, model: nn.Module, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """FairScale's own ``clip_grad_norm_``: the norm over every rank's gradient shards (the torch
        function would return this rank's partial norm). It clips every gradient of the module, so
        gradients outside ``params`` (another optimizer group's parameters that this group's loss
        reached; the trainer zeroes them before that group's backward anyway) are dropped first and
        the norm is the group's, as on one device; so are the all-zero gradients of root parameters
        no micro-batch used (added only to fire FairScale's hooks). The parameters are the
        module's own objects (``flatten_parameters=False``)."""
        self._drop_foreign_grads(model, params)
        return model.clip_grad_norm_(max_norm)

    def _drop_foreign_grads(self, model: nn.Module, params: list[nn.Parameter]) -> None:
        """Set to ``None`` the gradients outside ``params``, and those of root parameters that are
        exactly zero on every rank (unused by every micro-batch of the step: only the forward hook's
        ``0 * p[0]`` reached them)."""
        keep = {id(p) for p in params}
        for p in model.parameters():
            if p.grad is not None and id(p) not in keep:
                p.grad = None
        if not self._root_params:
            return
        used = torch.tensor([float(p.grad is not None and bool(p.grad.count_nonzero())) for p in self._root_params])
        if dist.is_initialized() and dist.get_world_size() > 1:  # a rank's shard may be all zero alone
            dist.all_reduce(used, op=dist.ReduceOp.MAX)
        for p, flag in zip(self._root_params, used.tolist()):
            if not flag:
                p.grad = None

    def layout(self):
        return self.layout_for(self.offload, self.compute_dtype, self.activation_checkpointing)

    @staticmethod
    def layout_for(offload: bool = True, compute_dtype: str = "bf16", activation_checkpointing: str = "none", **_: Any):
        """The layout from init args alone (``vilgkit plan`` on a machine without CUDA)."""
        from vilgkit.interfaces import StrategyLayout

        return StrategyLayout(
            sharding="full",
            cpu_offload=offload,
            recompute=activation_checkpointing,
            param_dtype=compute_dtype,
            reduce_dtype="fp32",
        )

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
        # this rank's optimizer shard: FairScale's gather_full_optim_state_dict needs flattened
        # parameters (NotImplementedError otherwise), and this strategy does not flatten
        optim = {name: opt.state_dict() for name, opt in optims.items()}
        safe_state.save(directory / f"rank{rank}", {n: ckpt._plain(v) for n, (_, v) in others.items()})
        safe_state.save(directory / f"optimizers_rank{rank}", optim)
        if rank == 0:
            from safetensors.torch import save_file

            for name, sd in weights.items():
                save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / f"{name}.safetensors"))
        dist.barrier()
        if rank == 0:
            files = {p.name: sharded.sha256_file(p) for p in directory.iterdir() if p.is_file() and p.name != MARKER}
            sharded.write_json_atomic(
                directory / MARKER, {"format": "vilgkit-full-1", "files": files, "world_size": dist.get_world_size()}
            )
        dist.barrier()

    def load_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        directory = Path(directory)
        marker = json.loads((directory / MARKER).read_text())
        for name, digest in marker["files"].items():
            if sharded.sha256_file(directory / name) != digest:
                raise sharded.CheckpointIntegrityError(f"{directory}: {name} does not match its hash")
        modules, optims, others = ckpt._split(state, self.unwrap)
        saved_world = int(marker["world_size"])
        if optims and saved_world != dist.get_world_size():
            raise sharded.CheckpointIntegrityError(
                f"{directory}: FairScaleFSDP saved per-rank optimizer shards for {saved_world} rank(s); "
                f"resume on {saved_world} rank(s), not {dist.get_world_size()} (the weights alone, e.g. "
                "`vilgkit export`, load on any world size)"
            )
        for name, module in modules.items():
            module.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
        optim = safe_state.load(directory / f"optimizers_rank{dist.get_rank()}")
        for name, opt in optims.items():
            opt.load_state_dict(optim[name])
        local = safe_state.load(directory / f"rank{dist.get_rank() % saved_world}")
        for name, (path, target) in others.items():
            ckpt._restore(state, path, target, local[name])
