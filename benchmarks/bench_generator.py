"""Generator speed: every vilgkit row of issue 30's table, with its limits measured in the same run.

For each thread count (``--threads 1,2``) the script measures, in this order:

* **limits** — the GEMM peak (a ``--gemm`` cube matmul, fp32 and bf16) and the read bandwidth (a
  ``sum`` over 512 MiB), the baselines every ratio below is taken against;
* **train** — one AdamW training step (both directions) on the reference configuration (8 layers,
  hidden 512, 8 heads, 32 text + 16×16 image tokens, batch 8, vocabularies 8192): fp32 dense,
  bf16-autocast dense, fp32 and bf16 with the sparse schedule (``SparseAttention``, paper rule,
  kernel 11); s/step, model TFLOP/s and MFU = model FLOP/s ÷ the same-dtype GEMM peak;
* **sample** — KV-cached sampling (top-k 64) at 16×16, batch 1 and 8, dense and sparse: tokens/s,
  batch-1 dense against the bandwidth limit (weight bytes per step ÷ read bandwidth), against the
  same sampler with plain ``F.linear`` (``gemv_few/gemv_many=linear``), and against no cache (the
  whole prefix through every layer each step, timed on 8 evenly spaced steps and integrated);
* **sample32** — the paper's 32×32 grid (1024 image tokens), dense vs sparse cached sampling at
  batch 1 and 8 (same width as the reference);
* **bestof** — best-of-8 and best-of-60 for one prompt: candidates sampled in one KV-cached batch,
  then self-reranked (``log P(prompt | codes)``, batched); best images/s (codes, not pixels: the
  image tokenizer's decode is benchmarked in ``bench_tokenizers.py``) and reranking as a share of
  sampling.

Model FLOPs count every matrix multiply of the dense model: ``2·(4C² + 2·C·mlp)`` and ``4·N·C`` per
token and layer, ``2·C·V`` per target token for the output head; training = 3× forward (the sparse
rows use the same count, so their "MFU" is dense-equivalent).

The per-machine dispatch (``vilgkit.dispatch``) is decided before anything is timed, per thread
count, and printed; ``--reprobe`` measures it again first. At the end a Markdown table is printed
(CPU model, torch, threads) to paste into docs/performance.md.

Run (reference config; about 20–30 minutes on a quiet 2-core CPU, most of it the 32×32 rows)::

    python benchmarks/bench_generator.py --threads 1,2 --json gen.json
    python benchmarks/bench_generator.py --quick                 # smoke test, < 30 s
    python benchmarks/bench_generator.py --sections sample32     # one part
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from bench_model import add_size_arguments, build_generator  # this folder is on sys.path as a script

from vilgkit import dispatch
from vilgkit.layout import Layout
from vilgkit.models import UnifiedTransformer
from vilgkit.self_rerank import self_rerank_scores

SECTIONS = ("limits", "train", "sample", "sample32", "bestof")


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock runs after one warm-up (the least disturbed by other processes)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_flops(n: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / best_time(lambda: a @ b, repeats)


def read_bandwidth(nbytes: int, repeats: int) -> float:
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    return nbytes / best_time(lambda: x.sum(), repeats)


def build(a, grid: int, sparse: bool) -> UnifiedTransformer:
    from vilgkit_attention import SparseAttention

    attention = SparseAttention(kernel_size=a.kernel) if sparse else None
    return build_generator(
        a.hidden, a.layers, a.heads, a.text_len, grid, attention, text_vocab=a.text_vocab, image_vocab=a.image_vocab
    )


def forward_flops(model: UnifiedTransformer, batch: int, text_len: int, grid: int) -> float:
    C, L, n = model.hidden_size, model.num_layers, grid * grid
    mlp = 2 * model.layers[0].mlp.fc1.out_features * C
    total = 0.0
    for N, T, V in ((text_len + n, n, model.image_vocab_size), (n + text_len - 1, text_len - 1, model.text_vocab_size)):
        total += batch * (L * N * (2 * (4 * C * C + mlp) + 4 * N * C) + T * 2 * C * V)
    return total


def train_step_time(model, batch, bf16: bool, steps: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch).losses["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return best_time(step, steps)


def sample_time(model, ids, grid: int, repeats: int, num_candidates: int = 1) -> float:
    model.eval()
    g = torch.Generator().manual_seed(0)
    return best_time(
        lambda: model.sample_images(ids, None, (grid, grid), num_candidates=num_candidates, top_k=64, generator=g),
        repeats,
    )


@torch.no_grad()
def nocache_time(model, ids, grid: int) -> float:
    """Seconds for a whole image without a cache: 8 evenly spaced steps timed, integrated over all steps."""
    model.eval()
    B, L = ids.shape
    n_img = grid * grid
    codes = torch.randint(0, model.image_vocab_size, (B, grid, grid))
    x_full, _, _, _ = model._stream("txt2img", {"text_ids": ids, "codes": codes})
    allowed = model.attention.allowed(0, model.num_layers, Layout.text_to_image(L, grid, grid))
    pad = torch.cat([ids == model.pad_id, torch.zeros(B, n_img, dtype=torch.bool)], 1)
    times = []
    for t in sorted({round(i * (n_img - 1) / 7) for i in range(8)}):
        n = L + t + 1
        mask = allowed[:n, :n][None, None] & ~pad[:, None, None, :n]

        def run(n=n, mask=mask):  # called right away; defaults bind this step
            x = x_full[:, :n]
            for block in model.layers:
                x, _, _ = block.prefill(x, mask)
            model.image_head(model.norm(x[:, -1])).argmax(-1)

        times.append(best_time(run, 1))
    return sum(times) / len(times) * n_img


def prompts(model, batch: int, text_len: int) -> torch.Tensor:
    return model.dummy_batch(batch, text_len, (1, 1), generator=torch.Generator().manual_seed(0))["text_ids"]


def run_threads(a, threads: int) -> dict:
    torch.set_num_threads(threads)
    decided = dispatch.prepare(reprobe=a.reprobe)  # before anything is timed: no probe inside a timing
    print(f"\n== {threads} thread(s): dispatch {decided}", flush=True)
    res: dict = {"threads": threads, "dispatch": decided}
    g = a.grid
    if "limits" in a.sections or "train" in a.sections or "sample" in a.sections:
        res["gemm_tflops"] = {
            n: gemm_flops(a.gemm, dt, 5) / 1e12 for n, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        }
        res["bandwidth_gbs"] = read_bandwidth(a.bandwidth_mib * 2**20, 5) / 1e9
        print(
            f"GEMM peak fp32 {res['gemm_tflops']['fp32']:.3f} / bf16 {res['gemm_tflops']['bf16']:.3f} TFLOP/s; "
            f"read bandwidth {res['bandwidth_gbs']:.1f} GB/s",
            flush=True,
        )
    if "train" in a.sections:
        for sparse in (False, True):
            model = build(a, g, sparse)
            batch = model.dummy_batch(a.batch, a.text_len, (g, g), generator=torch.Generator().manual_seed(0))
            flops = 3 * forward_flops(model, a.batch, a.text_len, g)
            for name in ("fp32", "bf16"):
                s = train_step_time(model, batch, name == "bf16", a.train_steps)
                mfu = flops / s / (res["gemm_tflops"][name] * 1e12)
                key = f"train_{'sparse' if sparse else 'dense'}_{name}"
                res[key] = {"step_s": s, "model_tflops": flops / s / 1e12, "mfu": mfu}
                print(f"{key}: {s:.3f} s/step, {flops / s / 1e12:.3f} TFLOP/s, MFU {100 * mfu:.0f} %", flush=True)
    if "sample" in a.sections:
        dense = build(a, g, False)
        weight_bytes = sum(
            p.numel() * p.element_size()
            for p in [*dense.layers.parameters(), *dense.norm.parameters(), *dense.image_head.parameters()]
        )
        limit = res["bandwidth_gbs"] * 1e9 / weight_bytes
        res["bandwidth_limit_tok_s"] = limit
        for sparse in (False, True):
            model = dense if not sparse else build(a, g, True)
            for bsz in (1, a.batch):
                ids = prompts(model, bsz, a.text_len)
                tok = bsz * g * g / sample_time(model, ids, g, a.sample_repeats)
                key = f"sample_{'sparse' if sparse else 'dense'}_b{bsz}"
                r = {"tok_s": tok}
                if not sparse:
                    with dispatch.forced(gemv_few="linear", gemv_many="linear"):
                        r["plain_linear_tok_s"] = bsz * g * g / sample_time(model, ids, g, a.sample_repeats)
                    r["nocache_tok_s"] = bsz * g * g / nocache_time(model, ids, g)
                    if bsz == 1:
                        r["fraction_of_bandwidth_limit"] = tok / limit
                res[key] = r
                print(
                    f"{key}: {tok:.1f} tok/s {json.dumps({k: round(v, 3) for k, v in r.items() if k != 'tok_s'})}",
                    flush=True,
                )
    if "sample32" in a.sections:
        g32 = a.grid32
        for bsz in (1, a.batch):
            out = {}
            for sparse in (False, True):
                model = build(a, g32, sparse)
                out["sparse" if sparse else "dense"] = (
                    bsz * g32 * g32 / sample_time(model, prompts(model, bsz, a.text_len), g32, 1)
                )
            out["speedup"] = out["sparse"] / out["dense"]
            res[f"sample{g32}_b{bsz}"] = out
            print(
                f"sample {g32}x{g32} batch {bsz}: dense {out['dense']:.1f}, sparse {out['sparse']:.1f} tok/s "
                f"-> {out['speedup']:.2f}x",
                flush=True,
            )
    if "bestof" in a.sections:
        model = build(a, g, False).eval()
        ids = prompts(model, 1, a.text_len)
        for n in (8, 60):
            t0 = time.perf_counter()
            codes = model.sample_images(
                ids, None, (g, g), num_candidates=n, top_k=64, generator=torch.Generator().manual_seed(0)
            )
            t_sample = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = self_rerank_scores(model, codes, ids, None, n)
            t_rerank = time.perf_counter() - t0
            assert scores.shape == (1, n)
            res[f"best_of_{n}"] = {
                "images_per_s": 1 / (t_sample + t_rerank),
                "sample_s": t_sample,
                "rerank_s": t_rerank,
                "rerank_share_of_sampling": t_rerank / t_sample,
            }
            print(
                f"best of {n}: {1 / (t_sample + t_rerank):.3f} images/s (sampling {t_sample:.2f} s, reranking "
                f"{t_rerank:.2f} s = {100 * t_rerank / t_sample:.0f} % of sampling)",
                flush=True,
            )
    return res


def markdown(runs: list[dict], a) -> str:
    """The table for docs/performance.md: one column per thread count."""
    cols = [f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}" for r in runs]
    lines = [f"| figure | {' | '.join(cols)} |", "|---|" + "---:|" * len(runs)]

    def row(label: str, fmt: Callable[[dict], str]) -> None:
        cells = []
        for r in runs:
            try:
                cells.append(fmt(r))
            except KeyError:
                cells.append("—")
        if any(c != "—" for c in cells):
            lines.append(f"| {label} | {' | '.join(cells)} |")

    row("GEMM peak fp32 / bf16 (TFLOP/s)", lambda r: f"{r['gemm_tflops']['fp32']:.3f} / {r['gemm_tflops']['bf16']:.3f}")
    row("read bandwidth (GB/s)", lambda r: f"{r['bandwidth_gbs']:.1f}")
    for key, label in (
        ("train_dense_fp32", "training step fp32, dense"),
        ("train_dense_bf16", "training step bf16, dense"),
        ("train_sparse_fp32", "training step fp32, sparse schedule"),
        ("train_sparse_bf16", "training step bf16, sparse schedule"),
    ):
        row(label, lambda r, k=key: f"{r[k]['step_s']:.2f} s ({100 * r[k]['mfu']:.0f} % of GEMM peak)")
    g, b = a.grid, a.batch
    row(
        f"cached sampling {g}×{g}, batch 1, fp32, dense (tok/s)",
        lambda r: (
            f"{r['sample_dense_b1']['tok_s']:.1f} ({100 * r['sample_dense_b1']['fraction_of_bandwidth_limit']:.0f} %"
            f" of the read-bandwidth limit; plain F.linear {r['sample_dense_b1']['plain_linear_tok_s']:.1f};"
            f" no cache {r['sample_dense_b1']['nocache_tok_s']:.1f})"
        ),
    )
    row(
        f"cached sampling {g}×{g}, batch {b}, dense / sparse (tok/s)",
        lambda r: f"{r[f'sample_dense_b{b}']['tok_s']:.0f} / {r[f'sample_sparse_b{b}']['tok_s']:.0f}",
    )
    row(f"cached sampling {g}×{g}, batch 1, sparse (tok/s)", lambda r: f"{r['sample_sparse_b1']['tok_s']:.1f}")
    g32 = a.grid32
    for bsz in (1, b):
        row(
            f"cached sampling {g32}×{g32}, batch {bsz}: dense / sparse (tok/s)",
            lambda r, k=f"sample{g32}_b{bsz}": f"{r[k]['dense']:.1f} / {r[k]['sparse']:.1f} ({r[k]['speedup']:.2f}×)",
        )
    for n in (8, 60):
        row(
            f"best of {n} (images/s; reranking as a share of sampling)",
            lambda r, k=f"best_of_{n}": f"{r[k]['images_per_s']:.3f} ({100 * r[k]['rerank_share_of_sampling']:.0f} %)",
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--threads",
        default=None,
        help="comma list of torch thread counts, each measured in turn (default 1,2; with --quick 1)",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {SECTIONS}")
    add_size_arguments(p)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--grid32", type=int, default=32, help="grid of the sparse-vs-dense sampling rows")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-vocab", type=int, default=8192)
    p.add_argument("--text-vocab", type=int, default=8192)
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per row (best is kept)")
    p.add_argument("--sample-repeats", type=int, default=2)
    p.add_argument("--gemm", type=int, default=2048)
    p.add_argument("--bandwidth-mib", type=int, default=512)
    p.add_argument("--reprobe", action="store_true", help="measure the per-machine dispatch again first")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script (< 30 s)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args()
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {SECTIONS}")
    if a.quick:
        a.layers, a.hidden, a.heads, a.grid, a.grid32, a.kernel, a.batch = 2, 64, 4, 4, 8, 3, 2
        a.train_steps, a.sample_repeats, a.gemm, a.bandwidth_mib, a.text_len = 1, 1, 256, 32, 8
        a.image_vocab = a.text_vocab = 256
    threads = [int(t) for t in (a.threads or ("1" if a.quick else "1,2")).split(",")]
    cpu = dispatch.machine_key(0).split(" | ")[0]
    print(f"{cpu}; torch {torch.__version__}; config {vars(a)}")
    runs = [run_threads(a, t) for t in threads]
    table = markdown(runs, a)
    print(f"\n{cpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}:\n\n{table}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"cpu": cpu, "torch": torch.__version__, "config": vars(a), "runs": runs, "table": table}, f, indent=2
            )


if __name__ == "__main__":
    main()
