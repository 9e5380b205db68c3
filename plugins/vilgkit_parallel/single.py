"""``SingleDevice``: one process, one device (CPU or one GPU); the reference strategy.

Checkpoint layout written by :meth:`SingleDevice.save_checkpoint` (inside a step folder that the
engine's ``CheckpointManager`` makes atomic and hashes); one file per entry of the state, named by
its key path::

    model.safetensors            a module's state dict (tied weights stored once)
    optimizers.<group>.pt        optimizer state, loadable with torch.load(weights_only=True)
    schedulers.<group>.json      scheduler state (plain numbers)
    trainer.json                 step, counters, loader position, Python/NumPy RNG (plain data)
    rng.safetensors              torch RNG states (CPU, and every CUDA device when present)
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vilgkit.engine.checkpoint import (
    CheckpointError,
    check_model_matches,
    load_optimizer,
    load_tensors,
    read_json,
    save_model_weights,
    save_optimizer,
    save_tensors,
    write_json,
)
from vilgkit.interfaces import MemoryPlan, ParallelStrategy
from vilgkit.registry import PARALLEL_STRATEGIES


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"SingleDevice: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("SingleDevice: device 'cuda' was asked for but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"SingleDevice: {device} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return resolved


def _kind(value: Any) -> str:
    if isinstance(value, nn.Module):
        return "module"
    if isinstance(value, torch.optim.Optimizer):
        return "optimizer"
    if callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
        return "stateful"
    if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return "tensors"
    return "data"


def _entries(state: dict[str, Any], prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(key path, kind, value)`` for every entry; dicts of modules/optimizers/schedulers are
    walked (``optimizers.main``), other dicts are one JSON (or tensor) file each."""
    out = []
    for key, value in state.items():
        path = f"{prefix}{key}"
        if (
            isinstance(value, dict)
            and value
            and all(_kind(v) in ("module", "optimizer", "stateful") for v in value.values())
        ):
            out += _entries(value, f"{path}.")
        else:
            out.append((path, _kind(value), value))
    return out


@PARALLEL_STRATEGIES.register_module()
class SingleDevice(ParallelStrategy):
    """Train on one device without any wrapping.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    def __init__(self, device: str = "auto") -> None:
        self.device_name = device
        self.device = _resolve_device(device)

    def __repr__(self) -> str:
        return f"SingleDevice(device={self.device})"

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device; the returned module is ``model`` itself."""
        if any(p.is_meta for p in model.parameters()):
            raise ValueError("SingleDevice.wrap: the model has parameters on 'meta'; build it on a real device")
        return model.to(self.device)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict on the CPU."""
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        """Write every entry of ``state`` into ``directory`` (one file each, named by its key path)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for path, kind, value in _entries(state):
            if kind == "module":
                save_model_weights(directory / f"{path}.safetensors", value)
            elif kind == "optimizer":
                save_optimizer(directory / f"{path}.pt", value)
            elif kind == "stateful":
                write_json(directory / f"{path}.json", value.state_dict())
            elif kind == "tensors":
                save_tensors(directory / f"{path}.safetensors", value)
            else:
                write_json(directory / f"{path}.json", value)

    def load_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        """Load ``directory`` into the objects of ``state`` in place (plain dicts are refilled)."""
        directory = Path(directory)
        for path, kind, value in _entries(state):
            if (
                kind == "data"
                and isinstance(value, dict)
                and not value
                and (directory / f"{path}.safetensors").is_file()
            ):
                kind = "tensors"  # an empty dict to refill: the saved file says what it held
            suffix = ".pt" if kind == "optimizer" else ".safetensors" if kind in ("module", "tensors") else ".json"
            file = directory / f"{path}{suffix}"
            if not file.is_file():
                raise CheckpointError(
                    f"{directory}: no {file.name} for '{path}' (has: "
                    f"{', '.join(sorted(p.name for p in directory.iterdir()))})"
                )
            if kind == "module":
                check_model_matches(value, file)
                value.load_state_dict(load_tensors(file, self.device), strict=True)
            elif kind == "optimizer":
                try:
                    load_optimizer(file, value)
                except ValueError as err:  # parameter-group sizes differ: the model changed
                    raise CheckpointError(f"{file}: optimizer state does not fit '{path}': {err}") from None
            elif kind == "stateful":
                value.load_state_dict(read_json(file))
            else:
                loaded = load_tensors(file) if kind == "tensors" else read_json(file)
                value.clear()
                value.update(loaded)

    # ------------------------------------------------------------------ memory
    def memory_plan(self, model: nn.Module, tokens_per_device: int) -> MemoryPlan:
        """Parameters, gradients and AdamW states (two fp32 moments) of ``model``, on one device.

        Activations come from ``model.activation_bytes(tokens)`` when the model offers it;
        otherwise they are reported as 0 with a note.
        """
        params = list(model.parameters())
        param_bytes = sum(p.numel() * p.element_size() for p in params)
        trainable = [p for p in params if p.requires_grad]
        grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
        optim_bytes = sum(2 * p.numel() * 4 for p in trainable)
        notes = [f"single device {self.device}; AdamW keeps two fp32 moments per trainable parameter"]
        estimate = getattr(model, "activation_bytes", None)
        activations = int(estimate(tokens_per_device)) if callable(estimate) else 0
        if not callable(estimate):
            notes.append(f"{type(model).__name__} has no activation_bytes(tokens): activations not estimated")
        return MemoryPlan(param_bytes, grad_bytes, optim_bytes, activations, notes=notes)

    def memory_stats(self) -> dict[str, float]:
        """Peak memory so far in MiB: CUDA allocator peak on GPU, process peak RSS on CPU."""
        if self.device.type == "cuda":
            return {"peak_mem_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return {"peak_rss_mib": peak / (2**20 if sys.platform == "darwin" else 2**10)}
