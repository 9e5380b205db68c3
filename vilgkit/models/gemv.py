"""Small-batch linear layers for CPU decoding: the weight read by every core at full bandwidth.

At one to a few rows per decoding step a linear layer is a matrix–vector product, bound by how fast
the weight is read. On the CPU, ``F.linear`` with one row runs on a single thread and reads the
``[out, in]`` weight at ≈ 10–12 GB/s. Two layouts do better (``benchmarks/bench_gemv.py``,
``benchmarks/bench_generator.py``; docs/performance.md, "Generator: training and sampling"):

* **One or two rows, T ≥ 2 threads — row split, no copy.** The weight viewed as ``[T, O/T, I]``
  (T contiguous blocks of output rows) and multiplied with ``bmm`` by the input columns: each thread
  streams its own block, ≈ 32 GB/s at one row — the speed of a ``sum`` over the same bytes (the
  transposed copy below: ≈ 21 GB/s).
* **More rows, or one thread and one or two rows — transposed copy.** ``Wᵀ`` stored as
  ``[T, I, O/T]`` (one column slice per thread) and multiplied with ``bmm``: at 8 rows ≈ 1.3× the
  row split's tokens/s; on one thread ≈ 15–16 GB/s against ≈ 11.6 for ``F.linear`` (on that EPYC,
  from 4 rows on one thread ``F.linear`` was faster: the dispatch probe finds that). The copy is
  cached next to the module and rebuilt whenever the weight changes (new storage, dtype, device,
  or an in-place update such as an optimizer step or ``load_state_dict``); it doubles the memory
  of the layers it serves.

Whether the split layouts beat ``F.linear`` depends on the CPU (on a 2-core Intel Xeon with AMX
the row split *lost* 2× at two threads), so :mod:`vilgkit.dispatch` decides per machine:
``gemv_few`` (1–2 rows) and ``gemv_many`` (3–16 rows), ``split`` or ``linear``, measured once
per CPU model / torch version / thread count (``VILGKIT_DISPATCH=gemv_few=linear`` forces one).

Dimension key: R rows, I input features, O output features, T slices (≤ threads).
"""

from __future__ import annotations

import torch
from torch import nn

from vilgkit import dispatch, dispatch_probes

#: Above this many rows a plain ``F.linear`` (a real matrix product) is as fast.
MAX_ROWS: int = 16

#: Weights smaller than this many elements stay on ``F.linear``: they sit in the cache, where the
#: split's extra ops cost more than the bandwidth it wins.
MIN_WEIGHT_NUMEL: int = 1 << 17

#: Up to this many rows (and with ≥ 2 threads) the weight is read in place, split by output rows;
#: more rows use the transposed copy, which measured faster there (batch 8: 434–483 vs 351–355
#: tok/s).
FEW_ROWS: int = 2

_PACK = "_vilgkit_split_gemv"
_VIEWS = "_vilgkit_row_split"


def _slices(out_features: int) -> int:
    """Largest slice count ≤ the thread count that divides ``out_features``."""
    t = max(1, torch.get_num_threads())
    while out_features % t:
        t -= 1
    return t


def _transposed(linear: nn.Linear, t: int) -> torch.Tensor:
    """``[T, I, O/T]`` copy of ``linear.weight.T`` split by output columns (cached, rebuilt when stale)."""
    w = linear.weight
    key = (w.data_ptr(), w._version, w.dtype, w.device, t)
    pack = getattr(linear, _PACK, None)
    if pack is None or pack[0] != key:
        o, i = w.shape
        with torch.no_grad():
            copy = w.detach().t().reshape(i, t, o // t).permute(1, 0, 2).contiguous()
        object.__setattr__(linear, _PACK, (key, copy))  # a plain attribute: not state, not moved by .to()
        return copy
    return pack[1]


def _row_blocks(linear: nn.Linear, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views ``[T, O/T, I]`` of the weight and ``[T, O/T, 1]`` of the bias, kept on the module.

    Views see in-place updates by themselves; they are rebuilt only when a tensor is replaced (new
    storage, dtype or device): rebuilding them on every call cost ≈ 8 % of a batch-1 decoding step.
    """
    w, b = linear.weight, linear.bias
    key = (w.data_ptr(), w.dtype, w.device, t, None if b is None else (b.data_ptr(), b.dtype))
    views = getattr(linear, _VIEWS, None)
    if views is None or views[0] != key:
        o, i = w.shape
        bias = None if b is None else b.detach().view(t, o // t, 1)
        views = (key, w.detach().view(t, o // t, i), bias)
        object.__setattr__(linear, _VIEWS, views)  # a plain attribute: not state, not moved by .to()
    return views[1], views[2]


def decode_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for ``x [..., I]``, through a split layout where this machine measured it faster.

    The split layouts serve CPU tensors with at most :data:`MAX_ROWS` rows outside autograd, for
    weights of at least :data:`MIN_WEIGHT_NUMEL` elements, when :mod:`vilgkit.dispatch` chose
    ``split`` for that row count; every other call is a plain ``linear(x)``. Results equal
    ``linear(x)`` up to float summation order.
    """
    w = linear.weight
    rows = x.numel() // x.shape[-1]
    if (
        x.device.type != "cpu"
        or rows > MAX_ROWS
        or w.numel() < MIN_WEIGHT_NUMEL
        or (torch.is_grad_enabled() and w.requires_grad)
    ):
        return linear(x)
    if dispatch.choose("gemv_few" if rows <= FEW_ROWS else "gemv_many") == "linear":
        return linear(x)
    return split_linear(linear, x)


def split_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The split layouts of the module docstring (no dispatch): what ``decode_linear`` runs on ``split``."""
    w = linear.weight
    rows = x.numel() // x.shape[-1]
    o, i = w.shape
    t = _slices(o)
    flat = x.reshape(rows, i)
    flat = flat if flat.dtype == w.dtype else flat.to(w.dtype)
    if t > 1 and rows <= FEW_ROWS and w.is_contiguous():
        # [T, O/T, I] @ [T, I, R] → [T, O/T, R]: thread j streams output rows j·O/T … (j+1)·O/T − 1
        blocks, bias = _row_blocks(linear, t)
        cols = flat.t().expand(t, i, rows)
        # the bias rides in the same call (one op less per layer and step)
        out = torch.bmm(blocks, cols) if bias is None else torch.baddbmm(bias, blocks, cols)
        return out.permute(2, 0, 1).reshape(*x.shape[:-1], o)
    out = torch.bmm(flat.expand(t, rows, i), _transposed(linear, t)).permute(1, 0, 2)  # [R, T, O/T]
    out = out.reshape(*x.shape[:-1], o)
    return out if linear.bias is None else out + linear.bias


dispatch.register_probe("gemv_few", lambda: dispatch_probes.gemv_probe(split_linear, 1))
dispatch.register_probe("gemv_many", lambda: dispatch_probes.gemv_probe(split_linear, 8))
