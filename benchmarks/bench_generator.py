"""Generator speed: training throughput / MFU and KV-cached sampling vs. its baselines.

Everything a number is compared against is measured by this script, in the same run, on the same
machine and dtype:

* training MFU = model FLOP/s ÷ the FLOP/s of a large matrix multiply (``--gemm`` cube);
* cached sampling vs. the no-cache path (recompute the whole prefix every step; timed on evenly
  spaced steps and integrated, because running all of it takes minutes on a CPU);
* batch-1 sampling vs. the memory-bandwidth limit = (weight bytes read per step) ÷ (read bandwidth
  of a large ``sum``).

Model FLOPs count every matrix multiply the dense model executes: ``24·C²`` (QKV, output, MLP with
ratio 4) and ``4·N·C`` (scores and values over the full stream) per token and layer, ``2·C·V`` per
target token for the output head; training is 3× forward.

Run (reference config of issue 6)::

    .venv/bin/python benchmarks/bench_generator.py            # add --quick for a smoke run
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from vilgkit.layout import Layout
from vilgkit import dispatch
from vilgkit.models import UnifiedTransformer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs (after one warm-up): the least disturbed by other processes."""
    fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_flops(n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=DEVICE), torch.randn(n, n, dtype=dtype, device=DEVICE)
    return 2 * n**3 / best_time(lambda: a @ b, repeats)


def read_bandwidth(nbytes: int, repeats: int) -> float:
    x = torch.ones(nbytes // 4, dtype=torch.float32, device=DEVICE)
    return nbytes / best_time(lambda: x.sum(), repeats)


def forward_flops(model: UnifiedTransformer, batch: int, text_len: int, grid: int) -> float:
    C, L, n = model.hidden_size, model.num_layers, grid * grid
    mlp = 2 * model.layers[0].mlp.fc1.out_features * C
    total = 0.0
    for N, T, V in ((text_len + n, n, model.image_vocab_size), (n + text_len - 1, text_len - 1, model.text_vocab_size)):
        total += batch * (L * N * (2 * (4 * C * C + mlp) + 4 * N * C) + T * 2 * C * V)
    return total


def bench_training(model, batch, dtype_name, steps) -> dict:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_bf16 = dtype_name == "bf16"

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(batch).losses["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"step_s": best_time(step, steps)}


@torch.no_grad()
def nocache_step_time(model, ids, mask, grid, steps_to_time: list[int], repeats: int) -> float:
    """Mean seconds of one no-cache step: the whole prefix ``[text | slots 0..t]`` through every layer."""
    B, L = ids.shape
    layout = Layout.text_to_image(L, grid, grid)
    codes = torch.randint(0, model.image_vocab_size, (B, grid, grid), device=DEVICE)
    x_full, _, _, _ = model._stream("txt2img", {"text_ids": ids, "text_mask": mask, "codes": codes})
    allowed = model.attention.allowed(0, model.num_layers, layout).to(DEVICE)
    pad = torch.cat([~mask, torch.zeros(B, grid * grid, dtype=torch.bool, device=DEVICE)], 1)
    times = []
    for t in steps_to_time:
        n = L + t + 1
        m = allowed[:n, :n][None, None] & ~pad[:, None, None, :n]

        def run():
            x = x_full[:, :n]
            for block in model.layers:
                x, _, _ = block.prefill(x, m)
            model.image_head(model.norm(x[:, -1])).argmax(-1)

        times.append(best_time(run, repeats))
    return sum(times) / len(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-vocab", type=int, default=8192)
    p.add_argument("--text-vocab", type=int, default=8192)
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per dtype (best is kept)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--decode-batches", default="1,8")
    p.add_argument("--gemm", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--skip-train", action="store_true", help="only the sampling measurements")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA the peak and bandwidth are the GPU's)")
    a = p.parse_args()
    if a.quick:
        a.layers, a.hidden, a.heads, a.grid, a.batch, a.train_steps, a.gemm = 2, 64, 4, 4, 2, 1, 256
        a.image_vocab = a.text_vocab = 256
    global DEVICE
    DEVICE = torch.device(a.device)
    torch.manual_seed(0)
    model = UnifiedTransformer(a.text_vocab, a.image_vocab, hidden_size=a.hidden, num_layers=a.layers,
                               num_heads=a.heads, max_text_len=a.text_len, max_image_grid=a.grid)
    batch = model.dummy_batch(a.batch, a.text_len, (a.grid, a.grid), generator=torch.Generator().manual_seed(0))
    model.to(DEVICE)
    batch = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}
    res: dict = {"config": {k: v for k, v in vars(a).items() if k not in ("json",)},
                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"}
    print(f"config: {res['config']}  threads={res['threads']}  torch={torch.__version__}")

    # ---------------------------------------------------------------- training
    flops = 3 * forward_flops(model, a.batch, a.text_len, a.grid)
    tokens = a.batch * (2 * (a.text_len + a.grid * a.grid) - 1)
    for name in [] if a.skip_train else a.dtypes.split(","):
        peak = gemm_flops(a.gemm, DTYPES[name], 5)
        r = bench_training(model, batch, name, a.train_steps)
        r.update(peak_tflops=peak / 1e12, tflops=flops / r["step_s"] / 1e12, tokens_per_s=tokens / r["step_s"])
        r["mfu"] = r["tflops"] * 1e12 / peak
        res[f"train_{name}"] = r
        print(f"train {name}: {r['step_s']:.2f} s/step, {r['tokens_per_s']:.0f} tokens/s, "
              f"{r['tflops']:.3f} TFLOP/s model vs {r['peak_tflops']:.3f} GEMM peak -> MFU {100 * r['mfu']:.1f}%")

    # ---------------------------------------------------------------- sampling
    model.eval()
    n_img = a.grid * a.grid
    bw = read_bandwidth(512 * 2**20, 5)
    weight_bytes = sum(p.numel() * p.element_size() for p in
                       [*model.layers.parameters(), *model.norm.parameters(), *model.image_head.parameters()])
    res["bandwidth_gbs"] = bw / 1e9
    res["weight_mb_per_step"] = weight_bytes / 2**20
    limit = bw / weight_bytes  # decoding steps/s if every step only streamed the weights once
    print(f"read bandwidth {bw / 1e9:.1f} GB/s; weights read per step {weight_bytes / 2**20:.1f} MiB "
          f"-> batch-1 limit {limit:.0f} tokens/s (fp32)")
    for bsz in (int(b) for b in a.decode_batches.split(",")):
        ids, mask = batch["text_ids"][:bsz].repeat(max(1, bsz // a.batch + 1), 1)[:bsz], None
        mask = ids != model.pad_id
        g = torch.Generator(device=DEVICE).manual_seed(0)
        sample = lambda: model.sample_images(ids, mask, (a.grid, a.grid), top_k=64, generator=g)  # noqa: E731
        t_cache = best_time(sample, 2)
        with dispatch.forced(gemv_few="linear", gemv_many="linear"):  # plain F.linear: the split layouts' baseline
            t_plain = best_time(sample, 2)
        spaced = sorted({round(i * (n_img - 1) / 7) for i in range(8)})
        t_nocache = nocache_step_time(model, ids, mask, a.grid, spaced, 1) * n_img
        r = {"cache_tokens_per_s": bsz * n_img / t_cache, "nocache_tokens_per_s": bsz * n_img / t_nocache,
             "speedup": t_nocache / t_cache, "cache_s_per_image_batch": t_cache,
             "cache_plain_linear_tokens_per_s": bsz * n_img / t_plain}
        if bsz == 1:
            r["fraction_of_bandwidth_limit"] = r["cache_tokens_per_s"] / limit
        res[f"sample_b{bsz}_fp32"] = r
        extra = f", {100 * r['fraction_of_bandwidth_limit']:.0f}% of the bandwidth limit" if bsz == 1 else ""
        print(f"sample batch {bsz} fp32: cache {r['cache_tokens_per_s']:.0f} tok/s "
              f"(plain F.linear: {r['cache_plain_linear_tokens_per_s']:.0f}), no cache "
              f"{r['nocache_tokens_per_s']:.1f} tok/s -> {r['speedup']:.1f}x{extra}")
    if "bf16" in a.dtypes.split(","):
        model.to(torch.bfloat16)
        ids = batch["text_ids"][:1]
        t = best_time(lambda: model.sample_images(ids, None, (a.grid, a.grid), top_k=64), 2)
        lim16 = limit * 2  # half the bytes per weight
        res["sample_b1_bf16"] = {"cache_tokens_per_s": n_img / t, "fraction_of_bandwidth_limit": n_img / t / lim16}
        print(f"sample batch 1 bf16: cache {n_img / t:.0f} tok/s, "
              f"{100 * n_img / t / lim16:.0f}% of the bf16 bandwidth limit {lim16:.0f} tok/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
