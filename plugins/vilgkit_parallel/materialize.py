"""Turn a sharded model built on ``meta`` into real, initialised tensors.

Initialisation is the model's job: a model that can be built on ``meta`` defines
``init_weights()`` (parameters *and* buffers: ``to_empty`` leaves buffers uninitialised). Without
it, every submodule's ``reset_parameters()`` is called (PyTorch's default initialisation), which is
only correct when the model has no buffers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def materialize(model: nn.Module, param_device: torch.device, buffer_device: torch.device) -> None:
    """``to_empty`` on ``param_device``, initialise, then move buffers to ``buffer_device``."""
    model.to_empty(device=param_device)
    init = getattr(model, "init_weights", None)
    with torch.no_grad():
        if callable(init):
            init()
        else:
            if any(True for _ in model.buffers()):
                names = [n for n, _ in model.named_buffers()][:5]
                raise ValueError(
                    f"{type(model).__name__} was built on 'meta' and has buffers ({', '.join(names)}) "
                    "but no init_weights() to initialise them; define init_weights() or build it on the CPU"
                )
            for module in model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
    if buffer_device != param_device:
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None:
                    module._buffers[name] = buf.to(buffer_device)


def fill_shards(
    model: nn.Module,
    full_value: Callable[[str], torch.Tensor],
    param_device: torch.device,
    buffer_device: torch.device,
) -> None:
    """``to_empty`` on ``param_device``, then every parameter and buffer from ``full_value(name)``
    (its full CPU tensor), one at a time: a sharded parameter (``DTensor``) keeps only this rank's
    shard of it, so no rank holds more than one full tensor at once."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    model.to_empty(device=param_device)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            full = full_value(name)
            if tuple(full.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{name}: value of shape {tuple(full.shape)} for a tensor of shape {tuple(tensor.shape)}"
                )
            if isinstance(tensor, DTensor):  # each rank cuts its own shard: no communication
                full = distribute_tensor(
                    full.to(tensor.dtype),
                    tensor.device_mesh,
                    tensor.placements,
                    src_data_rank=None,
                )
            tensor.copy_(full)
            del full
    if buffer_device != param_device:
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None:
                    module._buffers[name] = buf.to(buffer_device)
