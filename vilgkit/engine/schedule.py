"""Learning-rate schedule: linear warm-up, then a cosine decay to a floor.

The schedule is a pure function of the optimizer step, so resuming needs only the step counter
(the scheduler's own state is saved too, but nothing in it is random).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate before optimizer step ``step`` (0-based).

    Warm-up rises linearly to 1 over ``warmup_steps`` steps (the first step already uses
    ``1 / warmup_steps``, never 0, so no step is wasted); then a half cosine falls from 1 to
    ``min_lr_ratio`` at ``total_steps`` and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine` to every parameter group of ``optimizer``."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    # a partial of a module-level function: LambdaLR.state_dict() then stores only plain data
    fn = partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, fn)
