"""Where the demo's training time goes: one training step of its image tokenizer and of its generator.

Both are built from ``recipes/shapes_tiny.yaml`` (its ``image_tokenizer`` and ``generator``
settings, batch sizes and optimizers: AdamW for the tokenizer, Muon + AdamW for the generator) on
random inputs of the demo's shapes (64-px images; 8×8 codes with 30-id captions, both directions).
Each step is timed in bf16 autocast (what the recipe trains in) and in fp32, and the tokenizer's
also with channels-last tensors; the variants alternate so that a load change hits all of them.
With ``--profile`` the bf16 steps are also profiled (the operators with the most self CPU time).
With ``--compile`` a third generator variant runs its blocks' non-attention parts (``_qkv``,
``_finish``) through ``torch.compile(dynamic=True)``; its first step, the compilation, is reported too.

    OMP_NUM_THREADS=2 python benchmarks/bench_demo_steps.py [--repeats 8] [--profile] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def recipe_settings() -> dict:
    """The demo recipe's tokenizer and generator arguments and the two stages' trainer settings."""
    recipe = yaml.safe_load((ROOT / "recipes" / "shapes_tiny.yaml").read_text())
    stages = {s["class_path"]: s.get("init_args", {}) for s in recipe["stages"]}
    return {
        "text_vocab_size": recipe["text_tokenizer"]["init_args"]["vocab_size"],
        "tokenizer": recipe["image_tokenizer"]["init_args"],
        "generator": recipe["generator"]["init_args"],
        "tokenizer_trainer": stages["TrainTokenizer"]["trainer"],
        "generator_trainer": stages["TrainGenerator"]["trainer"],
    }


def tokenizer_step(settings: dict, bf16: bool, channels_last: bool) -> Callable[[], None]:
    from vilgkit_vq.vqvae import VQVAETokenizer

    torch.manual_seed(0)
    model = VQVAETokenizer(**settings["tokenizer"])
    images = torch.rand(settings["tokenizer_trainer"]["batch_size"], 3, 64, 64) * 2 - 1
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["tokenizer_trainer"]["lr"])

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(images)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def generator_step(settings: dict, bf16: bool, compiled: bool = False) -> Callable[[], None]:
    from vilgkit.engine.muon import MuonAdamW, muon_param_groups
    from vilgkit.models.unified import UnifiedTransformer
    from vilgkit.stages.generator_training import GeneratorTrainable

    torch.manual_seed(0)
    args = settings["generator"]
    vocab, codebook = settings["text_vocab_size"], settings["tokenizer"]["codebook_size"]
    generator = UnifiedTransformer(text_vocab_size=vocab, image_vocab_size=codebook, **args)
    if compiled:  # the attention stays eager: its dispatch lookup breaks a compiled graph
        for block in generator.layers:
            block._qkv = torch.compile(block._qkv, dynamic=True)
            block._finish = torch.compile(block._finish, dynamic=True)
    model = GeneratorTrainable(generator, directions=["txt2img", "img2txt"])
    trainer = settings["generator_trainer"]
    opt = MuonAdamW(muon_param_groups(model, list(model.parameters()), 0.01), lr=trainer["lr"], betas=(0.9, 0.95))
    batch, grid = trainer["batch_size"], args["max_image_grid"]
    ids = torch.randint(4, vocab, (batch, 30))
    ids[:, 0], ids[:, -1] = 2, 3  # BOS, EOS as the recipe's tokenizer numbers them
    inputs = {
        "codes": torch.randint(0, codebook, (batch, grid, grid)),
        "text_ids": ids,
        "text_mask": torch.ones(batch, 30, dtype=torch.bool),
    }

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(inputs)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def timed(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, dict[str, float]]:
    """Median and minimum seconds per step, the variants alternating, after 3 warm-up steps each."""
    for step in steps.values():
        for _ in range(3):
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    return {name: {"median": sorted(t)[len(t) // 2], "min": min(t)} for name, t in seconds.items()}


def top_operators(step: Callable[[], None], rows: int = 8) -> list[dict[str, float | str]]:
    """The operators with the most self CPU time over 5 steps, with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": e.self_cpu_time_total / total} for e in events[:rows]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--profile", action="store_true", help="also list the bf16 steps' costliest operators")
    parser.add_argument("--compile", action="store_true", help="also time the generator with compiled blocks")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    from vilgkit.dispatch import cpu_model, prepare

    prepare()  # no dispatch probe inside a timed step
    settings = recipe_settings()
    steps = {
        "tokenizer bf16": tokenizer_step(settings, True, False),
        "tokenizer bf16 channels-last": tokenizer_step(settings, True, True),
        "tokenizer fp32": tokenizer_step(settings, False, False),
        "generator bf16": generator_step(settings, True),
        "generator fp32": generator_step(settings, False),
    }
    result = {"machine": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.compile:
        steps["generator bf16, compiled blocks"] = generator_step(settings, True, compiled=True)
        start = time.perf_counter()
        steps["generator bf16, compiled blocks"]()  # compiles
        result["compile_seconds"] = time.perf_counter() - start
        print(f"compiling the generator's blocks (first step): {result['compile_seconds']:.1f} s")
    result["steps"] = timed(steps, args.repeats)
    print(f"{result['machine']}, torch {result['torch']}, {result['threads']} threads")
    print("| step | median | min |\n| --- | ---: | ---: |")
    for name, t in result["steps"].items():
        print(f"| {name} | {t['median'] * 1e3:.0f} ms | {t['min'] * 1e3:.0f} ms |")
    if args.profile:
        result["profile"] = {name: top_operators(steps[name]) for name in ("tokenizer bf16", "generator bf16")}
        for name, ops in result["profile"].items():
            print(f"\n{name}: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in ops))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
