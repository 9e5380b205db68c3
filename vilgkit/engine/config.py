"""Training settings shared by every training stage (a dataclass, so recipes validate it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainerConfig:
    """How a stage trains.

    Args:
        steps: optimizer steps (each may accumulate several micro-batches).
        batch_size: samples per micro-batch per device.
        grad_accum: micro-batches per optimizer step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW decay; never applied to norms, biases and embeddings.
        betas: AdamW betas.
        warmup_steps: linear warm-up before the cosine decay.
        min_lr_ratio: the cosine floor as a fraction of ``lr``.
        grad_clip: max global gradient norm (0 disables clipping).
        precision: ``"fp32"`` or ``"bf16"`` (autocast on CPU and CUDA).
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: how many complete checkpoints to keep (the newest is never deleted).
        log_every: steps between metric lines / progress-bar updates.
        nonfinite: ``"stop"`` raises on a non-finite loss; ``"skip"`` drops the batch and counts it.
        max_skipped: with ``"skip"``, stop after this many skipped batches.
        num_workers: data-loader workers.
        seed: base seed for this stage (combined with the run seed).
    """

    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped: int = 10
    num_workers: int = 0
    seed: int = 0
