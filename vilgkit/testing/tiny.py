"""Tiny generators and recipe sections for tests: one home for the set-up many test files share.

The defaults are :meth:`UnifiedTransformer.conformance_args` (40 text / 24 image ids, 32 wide, 2
layers, 2 heads, 12 text positions, a 4x4 grid); a test names only what it changes.
"""

from __future__ import annotations

from typing import Any

import torch

CPU_STRATEGY: dict[str, Any] = {"class_path": "SingleDevice", "init_args": {"device": "cpu"}}
"""The recipe's ``strategy:`` section of every single-process CPU test run."""


def tiny_generator_kwargs(**overrides: Any) -> dict[str, Any]:
    """``UnifiedTransformer`` keyword arguments: the conformance settings with ``overrides``."""
    from vilgkit.models.unified import UnifiedTransformer

    return {**UnifiedTransformer.conformance_args(), **overrides}


def tiny_generator(seed: int | None = 0, spread: float = 0.0, **overrides: Any) -> Any:
    """A tiny ``UnifiedTransformer`` (:func:`tiny_generator_kwargs`).

    Args:
        seed: ``torch.manual_seed`` before building; ``None`` builds from the current RNG state.
        spread: when > 0, add Gaussian noise of this scale to every weight: the GPT-2 init makes an
            untrained model nearly ignore its input, which would let wrong attention pass a test.
    """
    from vilgkit.models.unified import UnifiedTransformer

    if seed is not None:
        torch.manual_seed(seed)
    model = UnifiedTransformer(**tiny_generator_kwargs(**overrides))
    if spread > 0:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * spread)
    return model


def generator_section(**init_args: Any) -> dict[str, Any]:
    """The recipe's ``generator:`` section: a one-layer, two-head, 32-wide ``UnifiedTransformer`` with
    dense attention (the vocabulary sizes come from the tokenizers), ``init_args`` replacing those."""
    defaults = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "attention": {"class_path": "DenseAttention"}}
    return {"class_path": "UnifiedTransformer", "init_args": {**defaults, **init_args}}
