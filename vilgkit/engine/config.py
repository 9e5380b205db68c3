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
        lr: peak learning rate (of both parts under ``optimizer: muon``).
        weight_decay: decoupled weight decay; never applied to norms, biases and embeddings.
        betas: AdamW betas.
        optimizer: ``"adamw"``, or ``"muon"``: Muon for the hidden weight matrices and AdamW for
            embeddings, output heads (what a module lists in ``muon_excluded()``), norms and biases
            (:mod:`vilgkit.engine.muon`).
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
        group_by_length: sort each window of this many batches by sample length before cutting it
            into batches (0: off), so a batch pads less; needs a data set with ``sample_lengths()``
            (the generator stages' tokenized data). The order stays seeded and resumable.
        seed: base seed for this stage (combined with the run seed).
    """

    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: Literal["adamw", "muon"] = "adamw"
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
    group_by_length: int = 0
    seed: int = 0


def validate_config(cfg: TrainerConfig) -> None:
    """Raise ``VilgkitError`` listing every out-of-range setting."""
    from vilgkit.errors import VilgkitError

    checks = [
        (cfg.steps >= 1, f"steps must be >= 1, got {cfg.steps}"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.grad_accum >= 1, f"grad_accum must be >= 1, got {cfg.grad_accum}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.warmup_steps >= 0, f"warmup_steps must be >= 0, got {cfg.warmup_steps}"),
        (0 <= cfg.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}"),
        (cfg.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables), got {cfg.grad_clip}"),
        (cfg.optimizer in ("adamw", "muon"), f"optimizer must be 'adamw' or 'muon', got {cfg.optimizer!r}"),
        (cfg.precision in ("fp32", "bf16"), f"precision must be 'fp32' or 'bf16', got {cfg.precision!r}"),
        (cfg.nonfinite in ("stop", "skip"), f"nonfinite must be 'stop' or 'skip', got {cfg.nonfinite!r}"),
        (cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}"),
        (cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}"),
        (cfg.num_workers >= 0, f"num_workers must be >= 0, got {cfg.num_workers}"),
        (cfg.group_by_length >= 0, f"group_by_length must be >= 0 (0 disables), got {cfg.group_by_length}"),
    ]
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise VilgkitError("invalid trainer config: " + "; ".join(bad))
