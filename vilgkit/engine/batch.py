"""Helpers for collated batches: moving them to a device, counting and naming their samples."""

from __future__ import annotations

from typing import Any

import torch

from vilgkit.engine.loader import _batch_len


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other leaves are kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in batch):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def batch_size(batch: Any) -> int:
    """Samples in a collated batch."""
    return _batch_len(batch, 1)


def sample_ids(batch: Any) -> list[Any] | str:
    """The data-set indices of a batch when it carries them (``index``), else its size."""
    if isinstance(batch, dict) and "index" in batch:
        index = batch["index"]
        return index.tolist() if isinstance(index, torch.Tensor) else list(index)
    return f"<{batch_size(batch)} samples without an 'index' field>"
