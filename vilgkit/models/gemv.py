"""Small-batch linear layers for CPU decoding: the weight re-laid out so both cores stream it.

At one to a few rows per decoding step a linear layer is a matrix–vector product, bound by how fast
the weight is read. On the CPU, ``F.linear`` with one row runs on a single thread and reads the
``[out, in]`` weight at ≈ 10 GB/s; the same product with the weight transposed and split into one
``[in, out / T]`` slice per thread, run as a ``bmm`` over the T slices, reads it at ≈ 29 GB/s on this
2-core machine — the speed of a plain ``sum`` over the same bytes (``benchmarks/bench_generator.py``,
docs/performance.md "Generator: training and sampling").

:func:`decode_linear` keeps that layout as a copy next to the module, rebuilt whenever the weight
changes (new storage, dtype, device, or an in-place update such as an optimizer step or
``load_state_dict``). The copy doubles the memory of the layers it serves while decoding on the CPU;
set :data:`enabled` to ``False`` to trade the speed for the memory.

Dimension key: R rows, I input features, O output features, T slices (≤ threads).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Use the split layout for CPU decoding (``False``: always ``F.linear``, no weight copies).
enabled: bool = True

#: Above this many rows a plain ``F.linear`` (a real matrix product) is as fast.
MAX_ROWS: int = 16

#: Weights smaller than this many elements stay on ``F.linear``: they sit in the cache, where the
#: split's extra ops cost more than the bandwidth it wins.
MIN_WEIGHT_NUMEL: int = 1 << 17

_PACK = "_vilgkit_split_gemv"


def _slices(out_features: int) -> int:
    """Largest slice count ≤ the thread count that divides ``out_features``."""
    t = max(1, torch.get_num_threads())
    while out_features % t:
        t -= 1
    return t


def _packed(linear: nn.Linear) -> torch.Tensor:
    """``[T, I, O / T]`` copy of ``linear.weight`` (cached on the module, rebuilt when it goes stale)."""
    w = linear.weight
    key = (w.data_ptr(), w._version, w.dtype, w.device, torch.get_num_threads())
    pack = getattr(linear, _PACK, None)
    if pack is None or pack[0] != key:
        o, i = w.shape
        t = _slices(o)
        with torch.no_grad():
            slices = w.detach().t().reshape(i, t, o // t).permute(1, 0, 2).contiguous()
        object.__setattr__(linear, _PACK, (key, slices))  # a plain attribute: not state, not moved by .to()
        return slices
    return pack[1]


def decode_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for ``x [..., I]``, through the split layout when that is faster.

    The split layout serves CPU tensors with at most :data:`MAX_ROWS` rows outside autograd, for
    weights of at least :data:`MIN_WEIGHT_NUMEL` elements; every other call is a plain ``linear(x)``.
    Results equal ``linear(x)`` up to float summation order.
    """
    rows = x.numel() // x.shape[-1]
    if (not enabled or x.device.type != "cpu" or rows > MAX_ROWS or linear.weight.numel() < MIN_WEIGHT_NUMEL
            or (torch.is_grad_enabled() and linear.weight.requires_grad)):
        return linear(x)
    slices = _packed(linear)
    t, i, part = slices.shape
    flat = x.reshape(rows, i).to(slices.dtype)
    out = torch.bmm(flat.expand(t, rows, i), slices)  # [T, R, O/T]: one slice per thread
    out = out.permute(1, 0, 2).reshape(*x.shape[:-1], t * part)
    return out if linear.bias is None else out + linear.bias
