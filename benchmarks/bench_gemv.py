"""Decoding GEMV layouts against the memory bandwidth, with weights that do not fit in the cache.

Streams the reference model's decoding weights (8 layers × (QKV, output, MLP in, MLP out) at hidden
512, plus the 8192-code image head: 112 MiB in fp32) once per "step", as a batch-R decoding step
does, through each layout:

* ``row split``: the weight viewed as ``[T, O/T, I]`` times the input columns (``bmm``, no copy);
* ``transposed split``: a ``[T, I, O/T]`` copy of ``Wᵀ`` (``bmm``);
* ``F.linear``: the plain layer;
* ``decode_linear``: what :func:`vilgkit.models.gemv.decode_linear` picks;

against ``sum`` over the same weights (the read bandwidth the bandwidth limit uses). Timing one
small weight again and again measures the L3 cache instead, which is how an earlier layout looked
as fast as ``sum`` when it was not.

Run::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_gemv.py [--rows 1,2,8]
"""

from __future__ import annotations

import argparse

import torch
from bench_generator import best_time  # this folder is on sys.path when a benchmark runs as a script
from torch import nn

from vilgkit.models.gemv import decode_linear


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--rows", default="1,2,8")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    t, c = torch.get_num_threads(), a.hidden
    layers = [nn.Linear(i, o) for _ in range(a.layers) for o, i in ((3 * c, c), (c, c), (4 * c, c), (c, 4 * c))]
    layers.append(nn.Linear(c, a.vocab))
    layers = [layer.requires_grad_(False) for layer in layers]
    weights = [layer.weight for layer in layers]
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    transposed = [w.t().reshape(w.shape[1], t, w.shape[0] // t).permute(1, 0, 2).contiguous() for w in weights]
    print(f"threads={t} torch={torch.__version__}; {nbytes / 2**20:.0f} MiB of weights per step")
    print(f"{'rows':>4}  {'layout':18s} {'ms/step':>8} {'GB/s':>6}")
    for rows in (int(r) for r in a.rows.split(",")):
        xs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
        cases = {
            "row split": lambda xs=xs, rows=rows: [
                torch.bmm(w.view(t, w.shape[0] // t, -1), xs[w.shape[1]].t().expand(t, -1, rows)) for w in weights
            ],
            "transposed split": lambda xs=xs, rows=rows: [
                torch.bmm(xs[s.shape[1]].expand(t, rows, -1), s) for s in transposed
            ],
            "F.linear": lambda xs=xs: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in weights],
            "decode_linear": lambda xs=xs: [decode_linear(layer, xs[layer.in_features]) for layer in layers],
            "sum (bandwidth)": lambda: [w.sum() for w in weights],
        }
        for name, fn in cases.items():
            sec = best_time(fn, a.repeats)
            print(f"{rows:>4}  {name:18s} {sec * 1e3:8.2f} {nbytes / sec / 1e9:6.1f}")


if __name__ == "__main__":
    main()
