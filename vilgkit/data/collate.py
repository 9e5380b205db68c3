"""Batching for dict samples: tensors are stacked, everything else is kept as a list."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch a list of sample dicts.

    Tensors (and numpy arrays) under the same key are stacked along a new first dimension; any
    other value (strings, ints, scene lists) is gathered into a list in sample order.

    Raises:
        ValueError: on an empty batch, samples with different keys, or tensors of different shapes
            under one key (the message names the key and the shapes).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    keys = list(samples[0])
    for i, s in enumerate(samples[1:], start=1):
        if set(s) != set(keys):
            raise ValueError(f"sample {i} has keys {sorted(s)} but sample 0 has {sorted(keys)}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        if all(isinstance(v, np.ndarray) for v in values):
            values = [torch.from_numpy(v) for v in values]
        if all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack '{key}': tensors have different shapes {sorted(shapes)}")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
