"""The timing probes of :mod:`vilgkit.dispatch`: each times every branch of one decision on small,
representative operands and returns ``{branch: seconds}`` (best of a few interleaved runs).

The module that makes a decision registers its probe (``models.gemv``, ``models.dense_attention``,
``vilgkit_vq.vqvae``) and hands it the code to time, so this module imports none of them.

Sizes are chosen so that a probe takes tens of milliseconds yet measures what matters:

* ``gemv_*``: 16 weights ``[2048, 512]`` fp32 = 64 MiB, more than a last-level cache, read once per
  pass, as a decoding step streams its weights from memory (1 and 8 rows);
* ``attention_*``: forward + backward of one attention call, B=2, H=4, N=128, D=64, UniLM mask
  (the demos' short streams), under bf16 autocast or in fp32;
* ``encode_layout``: a VQ-VAE-like encoder stem (3×3 conv, two stride-2 4×4 convs, GroupNorm, SiLU)
  on 8 images of 64×64, inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vilgkit import dispatch

REPEATS = 3


def _interleaved(branches: dict[str, object]) -> dict[str, float]:
    """Best time per branch, the branches alternating so that a load change hits both."""
    for fn in branches.values():
        fn()  # warm-up (and any one-time weight copy)
    best = {name: float("inf") for name in branches}
    for _ in range(REPEATS):
        for name, fn in branches.items():
            best[name] = min(best[name], dispatch.best_time(fn, 1))
    return best


def gemv_probe(split_linear, rows: int) -> dict[str, float]:
    """``split`` (``split_linear(layer, x)``) vs ``linear`` (``F.linear``) for ``rows`` decoding rows."""
    weights = torch.full((16, 2048, 512), 1e-3)  # constant values: no random init to wait for
    layers = []
    for w in weights:
        layer = nn.Linear(1, 1)
        layer.weight, layer.bias = (
            nn.Parameter(w, requires_grad=False),
            nn.Parameter(torch.zeros(2048), False),
        )
        layers.append(layer)
    x = torch.full((rows, 512), 0.5)
    return _interleaved(
        {
            "split": lambda: [split_linear(layer, x) for layer in layers],
            "linear": lambda: [F.linear(x, layer.weight, layer.bias) for layer in layers],
        }
    )


def attention_probe(masked_attention, unilm_mask, dtype: torch.dtype) -> dict[str, float]:
    """``explicit`` (``masked_attention``) vs ``sdpa``, forward + backward, under ``dtype``."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 128, 64, generator=g).requires_grad_() for _ in range(3))
    mask = unilm_mask(32, 128)
    grad = torch.randn(2, 4, 128, 64, generator=g)

    def run(attend):
        def step():
            with (
                torch.enable_grad(),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16),
            ):
                low = dtype == torch.bfloat16  # bf16 inputs, as after the qkv projection under autocast
                qq, kk, vv = (x.bfloat16() if low else x for x in (q, k, v))
                out = attend(qq, kk, vv)
            torch.autograd.backward(out, grad.to(out.dtype))

        return step

    return _interleaved(
        {
            "explicit": run(lambda a, b, c: masked_attention(a, b, c, mask)),
            "sdpa": run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask)),
        }
    )


def encode_layout_probe() -> dict[str, float]:
    """``channels_last`` vs ``contiguous`` inputs of a VQ-VAE-like encoder stem."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.Conv2d(32, 64, 4, stride=2, padding=1),
        nn.GroupNorm(8, 64),
        nn.SiLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.Conv2d(64, 64, 4, stride=2, padding=1),
        nn.GroupNorm(8, 64),
        nn.SiLU(),
        nn.Conv2d(64, 32, 1),
    ).eval()
    images = torch.rand(8, 3, 64, 64)
    last = images.contiguous(memory_format=torch.channels_last)
    return _interleaved({"channels_last": lambda: net(last), "contiguous": lambda: net(images)})
