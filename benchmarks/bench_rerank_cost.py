"""What best-of-N reranking costs next to sampling, piece by piece, on a trained run (issue 30).

    python benchmarks/bench_rerank_cost.py runs/shapes_tiny [--prompts 100] [--candidates 8] [--repeats 3]

Samples ``--candidates`` images for each of the first ``--prompts`` held-out scenes' captions with
the run's saved sampling settings (as its ``Evaluate`` stage does), then times, best of
``--repeats``, alternating: the sampling itself (same seed, same candidates),

* decoding every candidate in one batch (the tokenizer's ``decode``) against
  ``Pipeline.decode_codes`` (:data:`vilgkit.pipeline.DECODE_BATCH` images at a time);
* the self-likelihood passes in fp32 (``self``) and under bf16 autocast (``self_bf16``);
* the consensus distances on the decoded images (``consensus``, without the decoding);
* the whole rerankers ``self+consensus`` and ``self_bf16+consensus`` through ``Pipeline.rerank``
  (decoding included, as a user's call pays it).

Prints each as seconds and as a share of the sampling time, the largest bf16 − fp32 score
difference and the share of prompts whose choice bf16 keeps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cpu() -> str:
    """The CPU as ``lscpu`` names it: model name, family and model (from /proc/cpuinfo where it exists)."""
    from vilgkit.dispatch import machine_key

    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    family = f", family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else ""
    return machine_key() + family


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    from demo_quality import recipe_sampling, test_set

    from vilgkit import dispatch
    from vilgkit.interfaces import RerankInputs
    from vilgkit.pipeline import Pipeline
    from vilgkit.reranker_names import build_named_reranker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    dispatch.prepare()  # no dispatch probe inside a timed region
    pipe = Pipeline.from_run_dir(args.run_dir)
    data = test_set(pipe, args.prompts)
    prompts = [data[i]["caption"] for i in range(args.prompts)]
    settings = {k: v for k, v in recipe_sampling(pipe).items() if k in ("temperature", "top_k", "top_p", "cfg_scale")}
    n = args.candidates
    codes, ids, mask = pipe.sample_codes(prompts, n, seed=0, truncate=True, **settings)  # also a warm-up
    inputs = {"num_candidates": n, "codes": codes, "text_ids": ids, "text_mask": mask, "generator": pipe.generator}
    rid, rmask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    images = pipe.decode_codes(codes, rid, rmask)
    self_fp32, self_bf16 = build_named_reranker("self"), build_named_reranker("self_bf16")
    consensus = build_named_reranker("consensus")
    ensemble_fp32, ensemble_bf16 = build_named_reranker("self+consensus"), build_named_reranker("self_bf16+consensus")

    pieces = {
        "sampling": lambda: pipe.sample_codes(prompts, n, seed=0, truncate=True, **settings),
        "decode, one batch": lambda: pipe.image_tokenizer.decode(codes),
        "decode, Pipeline.decode_codes": lambda: pipe.decode_codes(codes, rid, rmask),
        "self (fp32)": lambda: self_fp32.score(RerankInputs(**inputs)),
        "self_bf16": lambda: self_bf16.score(RerankInputs(**inputs)),
        "consensus distances": lambda: consensus.score(RerankInputs(**inputs, images=images)),
        "self+consensus, Pipeline.rerank": lambda: pipe.rerank(codes, ids, mask, n, ensemble_fp32),
        "self_bf16+consensus, Pipeline.rerank": lambda: pipe.rerank(codes, ids, mask, n, ensemble_bf16),
    }
    times = {name: float("inf") for name in pieces}
    outputs = {}
    for _ in range(args.repeats):  # alternate the pieces, so drifting machine speed hits all alike
        for name, fn in pieces.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name] = min(times[name], time.perf_counter() - start)

    fp32 = outputs["self (fp32)"].view(-1, n)
    bf16 = outputs["self_bf16"].view(-1, n)
    same = (fp32.argmax(1) == bf16.argmax(1)).float().mean().item()
    print(f"{args.run_dir}: {args.prompts} prompts x {n} candidates, settings {settings}")
    print(f"machine: {_cpu()}")
    print(f"| piece | seconds (best of {args.repeats}) | share of sampling |\n| --- | ---: | ---: |")
    sampling = times.pop("sampling")
    print(f"| sampling the {args.prompts * n} candidates | {sampling:.2f} | 1.00 |")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {seconds / sampling:.2f} |")
    gap = (bf16 - fp32).abs().max().item()
    print(f"self_bf16 − self: max |score difference| {gap:.3f} nats; same choice for {same:.1%} of prompts")


if __name__ == "__main__":
    main()
