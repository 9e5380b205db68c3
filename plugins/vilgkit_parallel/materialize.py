"""Turn a sharded model built on ``meta`` into real, initialised tensors.

Initialisation is the model's job: a model that can be built on ``meta`` defines
``init_weights()`` (parameters *and* buffers: ``to_empty`` leaves buffers uninitialised). Without
it, every submodule's ``reset_parameters()`` is called (PyTorch's default initialisation), which is
only correct when the model has no buffers.
"""
from __future__ import annotations

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
