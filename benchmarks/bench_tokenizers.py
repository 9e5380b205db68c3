"""Image tokenizer benchmarks (numbers for docs/performance.md, "Image tokenizers").

1. Encode / decode throughput (images/s) at 256 px for the paper's VQGAN (f = 8, 8192 codes,
   taming's OpenImages GumbelVQ architecture), fp32 and bf16 autocast, with the baseline of the
   same computation on taming's raw modules measured in the same run.
2. With ``--train``: trains each tiny Shapes recipe (recipes/tokenizers/*_shapes.yaml) as shipped
   and reports wall time, PSNR, codebook usage/perplexity and Shapes detector agreement on held-out
   images (the quality bar: < 5 min on the 2-core CPU, agreement ≥ 0.98).
3. With ``--demo-encode``: how fast the demo's VQ-VAE (shapes_tiny.yaml's settings, 64 px) encodes
   1 024 images as the stages' pre-tokenizing does, ``encode()`` (channels-last on the CPU) against
   the same encoder on a contiguous batch, with the share of codes both agree on.

    python benchmarks/bench_tokenizers.py [--batch 4] [--repeats 3] [--train [vqvae dvae vqgan]] [--demo-encode]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAPER_VQGAN = dict(
    codebook_size=8192,
    code_dim=256,
    z_channels=256,
    ch=128,
    ch_mult=[1, 1, 2, 4],
    num_res_blocks=2,
    attn_resolutions=[32],
    resolution=256,
    quantizer="gumbel",
    perceptual_weight=0.0,
)


@torch.no_grad()
def throughput(batch: int, repeats: int) -> list[dict]:
    from vilgkit_vq import VQGANTokenizer

    torch.manual_seed(0)
    tok = VQGANTokenizer(**PAPER_VQGAN).eval()
    x = torch.rand(batch, 3, 256, 256) * 2 - 1
    codes = tok.encode(x)

    def taming_encode():  # baseline: taming's modules called directly, logit argmax
        return tok.quantize.proj(tok.quant_conv(tok.encoder(x))).argmax(1)

    def taming_decode():
        z = tok.quantize.get_codebook_entry(codes.reshape(-1), (batch, 32, 32, 256))
        return tok.decoder(tok.post_quant_conv(z))

    rows = []
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        jobs = {
            "encode": lambda: tok.encode(x),
            "taming encode (baseline)": taming_encode,
            "decode": lambda: tok.decode(codes),
            "taming decode (baseline)": taming_decode,
        }
        best = {name: float("inf") for name in jobs}
        with autocast:
            for fn in jobs.values():  # warm-up (allocations, oneDNN kernel selection)
                fn()
            for _ in range(repeats):  # interleaved, so load changes hit ours and the baseline alike
                for name, fn in jobs.items():
                    t = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t)
        for name, seconds in best.items():
            rows.append({"what": name, "precision": precision, "batch": batch, "images_per_s": batch / seconds})
            print(
                f"{name:26s} {precision}  {batch / seconds:7.2f} images/s  ({seconds:.2f} s per batch of {batch})",
                flush=True,
            )
    return rows


def train_recipes(names: list[str]) -> list[dict]:
    from vilgkit.engine.runner import run

    rows = []
    for name in names:
        recipe = ROOT / "recipes" / "tokenizers" / f"{name}_shapes.yaml"
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            ctx = run([str(recipe)], ["--run_dir", str(Path(tmp) / name)])
            seconds = time.perf_counter() - t
            manifest = json.loads((ctx.run_dir / "train_tokenizer" / "image_tokenizer.json").read_text())
        ev = manifest["eval"]
        row = {
            "recipe": recipe.name,
            "wall_s": round(seconds, 1),
            "steps": manifest["steps"],
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in ev.items()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


@torch.no_grad()
def demo_encode(repeats: int) -> dict:
    from vilgkit.data.shapes import ShapesDataset
    from vilgkit_vq import VQVAETokenizer

    torch.manual_seed(0)
    tok = VQVAETokenizer(codebook_size=1024, code_dim=32, downsample=8, hidden=32, channel_mult=[1, 2, 4]).eval()
    data = ShapesDataset(split="test", size=1024, image_size=64, held_out=[], cache_mb=0)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    batches = images.split(128)  # the stages' tokenizing batch

    def contiguous():  # baseline: the encoder on the batch as the data loader hands it over
        return torch.cat([tok.quantizer.quantize(tok.encoder(b.contiguous())) for b in batches])

    def shipped():
        return torch.cat([tok.encode(b) for b in batches])

    def timed(fn) -> tuple[float, torch.Tensor]:  # seconds per pass over the images, and its codes
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            codes = fn()
        return (time.perf_counter() - t0) / repeats, codes

    (base, base_codes), (fast, fast_codes) = timed(contiguous), timed(shipped)
    agree = (base_codes == fast_codes).float().mean().item()
    print(
        f"demo VQ-VAE, 1024 images at 64 px: contiguous {len(images) / base:.0f} img/s, "
        f"encode() {len(images) / fast:.0f} img/s "
        f"({base / fast:.2f}×); codes agree {agree:.5f}"
    )
    return {"contiguous_img_s": len(images) / base, "encode_img_s": len(images) / fast, "agreement": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", nargs="*", default=None, help="train these tiny recipes (default: all three)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--demo-encode", action="store_true", help="the demo tokenizer's encode speed, channels-last vs contiguous"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    if not args.skip_throughput:
        throughput(args.batch, args.repeats)
    if args.demo_encode:
        demo_encode(args.repeats)
    if args.train is not None:
        train_recipes(args.train or ["vqvae", "dvae", "vqgan"])


if __name__ == "__main__":
    main()
