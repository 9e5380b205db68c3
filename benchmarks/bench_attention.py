"""Sparse vs dense attention: training step (time, memory) and KV-cached sampling, side by side.

Reference configuration of issue 7: 64 text + 32x32 image tokens, hidden 512, 8 heads, batch 2, a
stack of attention blocks (qkv and output projections, residual) using the paper's schedule
(row / column every 4th / conv 11x11 last). Both patterns are measured in the same run:

* training step (forward + backward): dense and sparse repeats are *interleaved* (A B A B ...) after a
  warm-up, so a load change on a shared machine hits both; the median and the minimum of
  ``--repeats`` (>= 5) are reported, with ratios of both; dense = SDPA with the oracle mask
  (PyTorch's fused kernel), sparse = this plugin's ``attend`` (block-wise on CPU, FlexAttention on
  CUDA);
* attention memory = bytes of the tensors the attention calls save for backward (storages counted
  once), and the whole step's peak (PyTorch memory profiler timeline on CPU, ``max_memory_allocated``
  on CUDA);
* sampling 1024 image tokens with a KV cache (interleaved the same way, ``--sample-repeats``): dense
  cached attention (slice of the cache) vs the sparse gather (``decode_keys`` + ``index_select``); and,
  with ``--generator``, the project's ``UnifiedTransformer.sample_images`` (MLPs, heads, sampling
  included) with either pattern.

The load average (``/proc/loadavg``) is recorded before and after. On a shared machine use
``--threads 1``: a ratio of single-thread timings is far less sensitive to other jobs than one of
multi-thread timings (a busy core slows every thread of a multi-threaded kernel).

Run::

    nice -n 10 .venv/bin/python benchmarks/bench_attention.py --threads 1 [--repeats 5] [--generator] [--quick]
    .venv/bin/python benchmarks/bench_attention.py --device cuda --generator
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from bench_model import add_size_arguments, build_generator  # this folder is on sys.path as a script
from torch import nn

import vilgkit_attention  # noqa: F401  (registers the patterns)
from vilgkit.layout import Layout
from vilgkit.models import DenseAttention
from vilgkit_attention import SparseAttention
from vilgkit_attention.decode import SparseKVCache


class AttnStack(nn.Module):
    """Residual attention blocks: qkv projection, pattern attention, output projection."""

    def __init__(self, pattern, hidden: int, heads: int, layers: int) -> None:
        super().__init__()
        self.pattern, self.heads, self.layers = pattern, heads, layers
        self.qkv = nn.ModuleList(nn.Linear(hidden, 3 * hidden) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.saved: dict[int, int] = {}
        self.attn_s = 0.0  # sampling: seconds inside the cached attention (cache write, gather, SDPA)

    def split(self, i: int, x: torch.Tensor) -> list[torch.Tensor]:
        return [t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv[i](x).chunk(3, -1)]

    def forward(self, x, layout, pad, count_saved: bool = False):
        for i in range(self.layers):
            q, k, v = self.split(i, x)
            if count_saved:

                def pack(t):
                    st = t.untyped_storage()
                    self.saved[st.data_ptr()] = st.nbytes()
                    return t

                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    a = self.pattern.attend(
                        q, k, v, layer=i, num_layers=self.layers, layout=layout, key_padding_mask=pad
                    )
            else:
                a = self.pattern.attend(q, k, v, layer=i, num_layers=self.layers, layout=layout, key_padding_mask=pad)
            x = x + self.out[i](a.transpose(1, 2).flatten(2))
        return x

    def _prefill(self, x, layout, valid, store) -> None:
        """The source through every layer (bidirectional, padded), handing each layer's keys and
        values to ``store(layer, k, v)``; shared by both cached samplers so they time the same prefill."""
        src = layout.source_length
        h = x[:, :src]
        for i in range(self.layers):
            q, k, v = self.split(i, h)
            store(i, k, v)
            mask = self.pattern.allowed(i, self.layers, layout)[:src, :src].to(x.device) & valid[..., :src]
            h = h + self.out[i](F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2))

    @torch.no_grad()
    def sample(self, x, layout, pad):
        """Prefill the source, then every target position through a KV cache (inputs given)."""
        b, n, src = x.shape[0], layout.length, layout.source_length
        d = x.shape[-1] // self.heads
        cache = [(x.new_zeros(b, self.heads, n, d), x.new_zeros(b, self.heads, n, d)) for _ in range(self.layers)]
        plan = [
            [self.pattern.decode_keys(i, self.layers, layout, p) for p in range(src, n)] for i in range(self.layers)
        ]
        plan = [[None if t is None else t.to(x.device) for t in row] for row in plan]
        valid = ~pad[:, None, None, :]

        def store(i, k, v):
            cache[i][0][:, :, :src], cache[i][1][:, :, :src] = k, v

        self._prefill(x, layout, valid, store)
        for p in range(src, n):
            h = x[:, p : p + 1]
            for i in range(self.layers):
                q, k, v = self.split(i, h)
                t0 = time.perf_counter()
                kc, vc = cache[i]
                kc[:, :, p : p + 1], vc[:, :, p : p + 1] = k, v
                idx = plan[i][p - src]
                if idx is None:
                    keys, vals, m = kc[:, :, : p + 1], vc[:, :, : p + 1], valid[..., : p + 1]
                else:
                    keys, vals, m = kc.index_select(2, idx), vc.index_select(2, idx), valid.index_select(3, idx)
                a = F.scaled_dot_product_attention(q, keys, vals, attn_mask=m)
                self.attn_s += time.perf_counter() - t0
                h = h + self.out[i](a.transpose(1, 2).flatten(2))
        return h

    @torch.no_grad()
    def sample_lines(self, x, layout, pad):
        """As :meth:`sample`, with the plugin's :class:`SparseKVCache` (line buffers for row / column
        layers, precomputed gathers for conv, slices for dense)."""
        b, n, src = x.shape[0], layout.length, layout.source_length
        d = x.shape[-1] // self.heads
        cache = SparseKVCache(self.pattern, layout, self.layers, b, self.heads, d, pad, device=x.device, dtype=x.dtype)
        valid = ~pad[:, None, None, :]
        self._prefill(x, layout, valid, cache.prefill)
        for p in range(src, n):
            h = x[:, p : p + 1]
            for i in range(self.layers):
                q, k, v = self.split(i, h)
                t0 = time.perf_counter()
                a = cache.attend(i, p, q, k, v)
                self.attn_s += time.perf_counter() - t0
                h = h + self.out[i](a.transpose(1, 2).flatten(2))
        return h


def timed_sampler(fn, model: AttnStack, log: list[float], *args):
    """``fn(*args)``, appending to ``log`` the seconds it spent in cached attention."""

    def run():
        model.attn_s = 0.0
        out = fn(*args)
        log.append(model.attn_s)
        return out

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (``uptime``); empty where ``/proc`` is missing."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return []


def interleaved_times(fns: dict, repeats: int, device: torch.device) -> dict[str, dict]:
    """Time every function ``repeats`` times, interleaved (A B A B ...), after one warm-up each.

    Returns per name ``{"median_s", "min_s", "all_s"}``.
    """
    for fn in fns.values():
        fn()  # warm-up (FlexAttention compiles here; caches fill)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "all_s": t} for name, t in times.items()}


def ratio_line(label: str, t: dict, a: str = "dense", b: str = "sparse") -> str:
    return (
        f"{label} speed-up {a}/{b}: median {t[a]['median_s'] / t[b]['median_s']:.2f}x, "
        f"min {t[a]['min_s'] / t[b]['min_s']:.2f}x"
    )


def step_peak_bytes(fn, device: torch.device) -> int | None:
    """Peak memory of one call above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:  # the CPU timeline is a private PyTorch API: report None rather than fail
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        return int(max(sum(s) for s in sizes))
    except Exception:  # noqa: BLE001
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=int, default=64)
    ap.add_argument("--grid", type=int, default=32)
    add_size_arguments(ap)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="training steps per pattern (interleaved)")
    ap.add_argument("--sample-repeats", type=int, default=5, help="sampling runs per pattern (interleaved)")
    ap.add_argument("--no-recompute-row", action="store_true", help="also time sparse with recompute=False")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch default)")
    ap.add_argument("--generator", action="store_true", help="also time UnifiedTransformer.sample_images")
    ap.add_argument("--skip-sampling", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument(
        "--per-layer",
        action="store_true",
        help="also time one attention call (fwd+bwd) per kind: dense, row, column, conv",
    )
    ap.add_argument("--quick", action="store_true", help="8x8 image, 2 layers: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.grid, args.layers, args.repeats, args.sample_repeats, args.text = 8, 2, 2, 2, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    layout = Layout.text_to_image(args.text, args.grid, args.grid)
    torch.manual_seed(0)
    x = torch.randn(args.batch, layout.length, args.hidden, device=device)
    pad = torch.zeros(args.batch, layout.length, dtype=torch.bool, device=device)
    pad[1:, args.text - args.text // 4 : args.text] = True  # a shorter caption in the other rows
    patterns = {
        "dense": DenseAttention(),
        "sparse": SparseAttention(kernel_size=args.kernel),
    }
    if device.type == "cpu" and args.no_recompute_row:
        patterns["sparse_no_recompute"] = SparseAttention(kernel_size=args.kernel, recompute=False)
    results: dict = {
        "config": {k: v for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "load_before": load_average(),
        "train": {},
    }
    print(
        f"layout: {args.text} text + {args.grid}x{args.grid} image, batch {args.batch}, hidden {args.hidden}, "
        f"{args.heads} heads, {args.layers} layers, kernel {args.kernel}, device {results['device']}, "
        f"threads {results['threads']}, load average before {results['load_before']}"
    )
    models, steps = {}, {}
    for name, pattern in patterns.items():
        torch.manual_seed(0)
        models[name] = model = AttnStack(pattern, args.hidden, args.heads, args.layers).to(device)

        def step(model=model, count=False):
            model.zero_grad(set_to_none=True)
            model(x, layout, pad, count_saved=count).pow(2).mean().backward()

        steps[name] = step
    timing = {} if args.skip_train else interleaved_times(steps, args.repeats, device)
    for name, model in models.items() if timing else ():
        model.saved.clear()
        steps[name](count=True)
        saved = sum(model.saved.values())
        peak = step_peak_bytes(steps[name], device)
        t = timing[name]
        results["train"][name] = {
            **t,
            "attn_saved_MB": saved / 1e6,
            "step_peak_MB": None if peak is None else peak / 1e6,
        }
        print(
            f"train {name:20s} step median {t['median_s'] * 1e3:8.1f} ms  min {t['min_s'] * 1e3:8.1f} ms   "
            f"attention saved {saved / 1e6:7.1f} MB   step peak {'n/a' if peak is None else f'{peak / 1e6:.1f} MB'}"
        )
    t = results["train"]
    if t:
        print(
            ratio_line("train", t) + f"   attention memory sparse/dense: "
            f"{t['sparse']['attn_saved_MB'] / t['dense']['attn_saved_MB']:.2f}"
        )
    if args.per_layer:
        results["per_layer"] = per_layer_times(args, layout, pad, device)
    if not args.skip_sampling:
        samplers, attn_times = {}, {}
        for name, pattern_name, method in (
            ("dense", "dense", "sample"),
            ("sparse", "sparse", "sample"),
            ("sparse_lines", "sparse", "sample_lines"),
        ):
            torch.manual_seed(0)
            model = AttnStack(patterns[pattern_name], args.hidden, args.heads, args.layers).to(device)
            samplers[name] = timed_sampler(
                getattr(model, method), model, attn_times.setdefault(name, []), x, layout, pad
            )
        with torch.no_grad():  # the two sparse samplers agree (same weights, same inputs)
            torch.testing.assert_close(samplers["sparse"](), samplers["sparse_lines"](), atol=1e-4, rtol=1e-4)
        for log in attn_times.values():
            log.clear()
        results["sample"] = s = interleaved_times(samplers, args.sample_repeats, device)
        for name in samplers:
            a = attn_times[name][1:]  # without the warm-up
            s[name].update({"attn_median_s": statistics.median(a), "attn_min_s": min(a), "attn_all_s": a})
            print(
                f"sample {name:12s} {layout.target.length} tokens: median {s[name]['median_s']:7.2f} s  "
                f"min {s[name]['min_s']:7.2f} s   of which cached attention: median {s[name]['attn_median_s']:6.2f} s  "
                f"min {s[name]['attn_min_s']:6.2f} s"
            )
        for b in ("sparse", "sparse_lines"):
            print(
                f"sampling, cached attention only, dense/{b}: median "
                f"{s['dense']['attn_median_s'] / s[b]['attn_median_s']:.2f}x, "
                f"min {s['dense']['attn_min_s'] / s[b]['attn_min_s']:.2f}x"
            )
        print(ratio_line("sampling (gather)", s))
        print(ratio_line("sampling (SparseKVCache)", s, b="sparse_lines"))
    if args.generator:
        results["generator_sample"] = generator_sampling(args, device, patterns)
    results["load_after"] = load_average()
    print(f"load average after {results['load_after']}")
    print(json.dumps(results))


def per_layer_times(args, layout, pad, device) -> dict:
    """One attention call, forward + backward, per image pattern (interleaved repeats)."""
    torch.manual_seed(0)
    shape = (args.batch, args.heads, layout.length, args.hidden // args.heads)
    qkv = [torch.randn(shape, device=device, requires_grad=True) for _ in range(3)]
    calls = {"dense": DenseAttention()}
    calls.update({kind: SparseAttention(kernel_size=args.kernel, schedule=kind) for kind in ("row", "column", "conv")})

    def call(pattern):
        for t in qkv:
            t.grad = None
        pattern.attend(*qkv, layer=0, num_layers=1, layout=layout, key_padding_mask=pad).sum().backward()

    out = interleaved_times({k: (lambda p=p: call(p)) for k, p in calls.items()}, args.repeats, device)
    for name, t in out.items():
        print(
            f"one attention call {name:6s} fwd+bwd: median {t['median_s'] * 1e3:7.1f} ms  "
            f"min {t['min_s'] * 1e3:7.1f} ms"
            f"   dense/this (median): {out['dense']['median_s'] / t['median_s']:.2f}x"
        )
    return out


def generator_sampling(args, device, patterns) -> dict:
    """End to end: the project's generator sampling one image per prompt with each pattern."""
    ids = torch.randint(5, 100, (args.batch, args.text), device=device)
    fns = {}
    for name in ("dense", "sparse"):
        gen = build_generator(args.hidden, args.layers, args.heads, args.text, args.grid, patterns[name])
        gen = gen.to(device).eval()
        fns[name] = lambda gen=gen: gen.sample_images(
            ids, None, (args.grid, args.grid), generator=torch.Generator(device).manual_seed(0)
        )
    out = interleaved_times(fns, max(1, args.sample_repeats // 2), device)
    for name in fns:
        print(
            f"generator sample_images {name:7s}: median {out[name]['median_s']:7.2f} s  min {out[name]['min_s']:7.2f} s"
        )
    print(ratio_line("generator sampling", out))
    return out


if __name__ == "__main__":
    main()
