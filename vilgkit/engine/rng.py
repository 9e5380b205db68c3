"""Seeding and capturing every random-number generator a run touches (Python, NumPy, torch, CUDA).

States are split into JSON-safe data (Python's and NumPy's, as lists of ints) and tensors (torch's
byte states, saved as safetensors), so restoring them never unpickles anything.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def derive_seed(run_seed: int, stage_seed: int) -> int:
    """One stable 32-bit seed from the run's and the stage's seeds."""
    return (int(run_seed) * 1_000_003 + int(stage_seed)) % 2**32


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(json_state, tensor_state)`` of every generator."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    data = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    return data, tensors


def restore(data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture`; CUDA states are restored for the devices present."""
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"].to(torch.uint8).cpu())
    cuda = sorted((k for k in tensors if k.startswith("cuda")), key=lambda k: int(k[4:]))
    if cuda and torch.cuda.is_available():
        for key in cuda[: torch.cuda.device_count()]:
            torch.cuda.set_rng_state(tensors[key].cpu(), device=int(key[4:]))


@contextlib.contextmanager
def side_quest(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode, no gradients, and every random state restored afterwards: for sampling and
    evaluation in the middle of training without changing the training's random streams."""
    data, tensors = capture()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)
        restore(data, tensors)
