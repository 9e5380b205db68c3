"""Optimizer construction: AdamW with weight decay only where it belongs.

Decay is **not** applied to (decided per parameter, in this order):

1. names the module lists in ``no_weight_decay()`` (timm's convention: a set of parameter names,
   e.g. a positional-embedding ``nn.Parameter``);
2. parameters owned directly by a normalisation layer (``LayerNorm``, ``GroupNorm``, ``RMSNorm``,
   batch/instance norms, ``LocalResponseNorm``, and any class whose name ends in ``Norm``) or by an
   embedding (``nn.Embedding``, ``nn.EmbeddingBag``, any class whose name ends in ``Embedding``);
3. every parameter with fewer than 2 dimensions (biases, gains, scalars such as a logit scale).

Everything else (weight matrices, convolution kernels) decays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


def _is_no_decay_owner(module: nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, NORM_TYPES + EMBEDDING_TYPES) or name.endswith("Norm") or name.endswith("Embedding")


def listed_parameter_names(model: nn.Module, hook_name: str) -> set[str]:
    """Names every submodule returns from its ``hook_name()`` method (e.g. ``no_weight_decay``),
    prefixed with the submodule's path as in ``model.named_parameters()``."""
    names: set[str] = set()
    for prefix, sub in model.named_modules():
        hook = getattr(sub, hook_name, None)
        if callable(hook):
            names |= {f"{prefix}.{n}" if prefix else n for n in hook()}
    return names


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of parameters that must not be decayed."""
    explicit = listed_parameter_names(model, "no_weight_decay")
    names: set[str] = set()
    for prefix, sub in model.named_modules():
        owner = _is_no_decay_owner(sub)
        for pname, param in sub.named_parameters(recurse=False):
            full = f"{prefix}.{pname}" if prefix else pname
            if full in explicit or owner or param.ndim < 2:
                names.add(full)
    return names


def split_decay(model: nn.Module, params: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split ``params`` (a subset of ``model``'s) into ``(decay, no_decay)`` lists, order kept."""
    names = no_decay_parameter_names(model)
    no_decay_ids = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in names}
    decay, no_decay = [], []
    for p in params:
        (no_decay if id(p) in no_decay_ids else decay).append(p)
    return decay, no_decay


def normalize_groups(groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accept ``optimizer_groups()`` values as a parameter list or a dict with ``params`` + overrides.

    Overrides (``lr``, ``weight_decay``, ``betas``) replace the trainer config's values for that group.
    """
    if not groups:
        raise ValueError("optimizer_groups() returned no groups: nothing to train")
    out: dict[str, dict[str, Any]] = {}
    for name, value in groups.items():
        spec = dict(value) if isinstance(value, dict) else {"params": value}
        params = [p for p in spec.pop("params") if p.requires_grad]
        if not params:
            raise ValueError(f"optimizer group {name!r} has no trainable parameters")
        unknown = set(spec) - {"lr", "weight_decay", "betas"}
        if unknown:
            raise ValueError(
                f"optimizer group {name!r}: unknown override(s) {sorted(unknown)}; allowed: lr, weight_decay, betas"
            )
        out[name] = {"params": params, **spec}
    seen: dict[int, str] = {}
    for name, spec in out.items():
        for p in spec["params"]:
            if id(p) in seen and seen[id(p)] != name:
                raise ValueError(f"a parameter is in both optimizer groups {seen[id(p)]!r} and {name!r}")
            seen[id(p)] = name
    return out


def adamw_factory(*, lr: float, betas: tuple[float, float], weight_decay: float):
    """``factory(param_groups) -> AdamW`` for :meth:`ParallelStrategy.build_optimizer`."""

    def factory(param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        # foreach kernels are deterministic on CPU and CUDA; fused is left to strategies that want it
        return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    return factory


def adamw_param_groups(model: nn.Module, params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """The two AdamW parameter groups (decayed, not decayed) for ``params``; empty ones dropped."""
    decay, no_decay = split_decay(model, params)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
