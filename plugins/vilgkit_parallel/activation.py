"""Activation checkpointing (recompute) per transformer block.

``full`` keeps only each block's input and recomputes the block in backward. ``selective`` keeps
the outputs of matrix products and attention (expensive to recompute) and recomputes the cheap
element-wise ops, norms and activations (PyTorch's selective activation checkpointing policy).

The block's ``forward`` is replaced on the *instance*, so parameter names and state-dict keys are
unchanged: a checkpoint written with recompute on loads without it, and vice versa.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

Recompute = Literal["none", "full", "selective"]

#: ops whose outputs selective recompute keeps (matmuls and attention kernels)
_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _selective_policy(ctx, op, *args, **kwargs):  # noqa: ANN001
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return create_selective_checkpoint_contexts(_selective_policy)


def apply_activation_checkpointing(blocks: list[nn.Module], mode: Recompute) -> int:
    """Make every block in ``blocks`` recompute in backward; returns how many were wrapped."""
    if mode not in ("none", "full", "selective"):
        raise ValueError(f"activation checkpointing must be 'none', 'full' or 'selective', got {mode!r}")
    if mode == "none":
        return 0
    for block in blocks:
        if getattr(block, "_vilgkit_recompute", None) is not None:
            continue
        inner = block.forward
        kwargs = {"use_reentrant": False}
        if mode == "selective":
            kwargs["context_fn"] = _selective_context

        @functools.wraps(inner)
        def forward(*args, _inner=inner, _kwargs=kwargs, **kw):
            if not torch.is_grad_enabled():  # inference: nothing to recompute
                return _inner(*args, **kw)
            return checkpoint(_inner, *args, **_kwargs, **kw)

        block.forward = forward
        block._vilgkit_recompute = mode
    return len(blocks)


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: ``model.blocks()``, else those of its submodules that define
    ``blocks()`` (e.g. the generator inside the engine's ``GeneratorTrainable``), else ``[]``."""
    fn = getattr(model, "blocks", None)
    if callable(fn) and list(fn()):
        return list(fn())
    found: list[nn.Module] = []
    for child in model.children():
        found += model_blocks(child)
    return found


def model_root(model: nn.Module) -> nn.Module:
    """The model a trainable wraps: ``model`` itself, or its one child that defines ``blocks()`` or
    ``full_precision_modules()`` (e.g. the generator inside the engine's ``GeneratorTrainable``)."""
    if callable(getattr(model, "full_precision_modules", None)):
        return model
    for child in model.children():
        if callable(getattr(child, "full_precision_modules", None)):
            return child
    return model
