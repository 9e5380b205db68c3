"""Does self-reranking raise Shapes prompt accuracy over a random choice among the SAME candidates?

For N in {1, 4, 16}: sample N candidates per prompt in one KV-cached batch, decode all of them and
check each with the Shapes detector (``image_matches_scene``). Then compare, on those very candidates:

* random: the expected accuracy of a uniformly random pick = the mean match rate over candidates
  (exact expectation, no extra sampling noise);
* self:   the candidate with the highest log P(prompt | codes) under the same generator;
* oracle: any candidate matches (the ceiling a perfect reranker could reach).

It also times generation and reranking (seconds, and reranking as a fraction of generation).

Usage (needs a trained run, e.g. the demo's ``make demo`` → runs/shapes_tiny)::

    python benchmarks/bench_rerank.py --run-dir runs/shapes_tiny --num-prompts 64 --ns 1,4,16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/shapes_tiny")
    parser.add_argument("--stage", default=None, help="generator stage (default: the last)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--ns", default="1,4,16")
    parser.add_argument("--split", default="test", help="ShapesDataset split the prompts come from")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per sampling batch")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()

    import vilgkit.builtins  # noqa: F401
    from vilgkit import Pipeline
    from vilgkit.data.shapes import image_matches_scene
    from vilgkit.interfaces import RerankInputs, RunContext
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import RERANKERS
    from vilgkit.stages.evaluate import default_eval_data

    run_dir = Path(args.run_dir)
    if not (run_dir / "recipe.resolved.yaml").is_file():
        print(f"bench_rerank: no trained run at {run_dir} (run `make demo` first, or pass --run-dir)", file=sys.stderr)
        return 2
    get_plugin_manager()
    pipe = Pipeline.from_run_dir(run_dir, stage=args.stage, device="cpu")
    from vilgkit.artifacts import read_recipe

    recipe = read_recipe(run_dir)
    data, _ = default_eval_data(RunContext(run_dir=run_dir, components={}, recipe=recipe), args.num_prompts, args.split)
    items = [data[i] for i in range(min(args.num_prompts, len(data)))]
    reranker = RERANKERS.get("SelfReranker")(batch_size=64)
    print(
        f"bench_rerank: {len(items)} prompts from split={args.split}, run {run_dir} (stage {pipe.stage_dir.name}); "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'N':>3} {'random':>8} {'self':>8} {'oracle':>8} {'gen s':>8} {'rerank s':>9} {'rerank/gen':>10}")
    results = []
    for n in [int(x) for x in args.ns.split(",")]:
        matches, chosen = [], []
        gen_s = rerank_s = 0.0
        for start in range(0, len(items), args.batch_size):
            chunk = items[start : start + args.batch_size]
            prompts = [it["caption"] for it in chunk]
            t = time.perf_counter()
            codes, ids, mask = pipe.sample_codes(
                prompts, n, seed=args.seed + start, temperature=args.temperature, top_k=args.top_k, truncate=True
            )
            gen_s += time.perf_counter() - t
            result = reranker.rerank(
                RerankInputs(num_candidates=n, codes=codes, text_ids=ids, text_mask=mask, generator=pipe.generator)
            )
            rerank_s += result.seconds
            images = pipe.decode_codes(codes, ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)).cpu()
            ok = torch.tensor(
                [bool(image_matches_scene(img, chunk[r // n]["scene"])["match"]) for r, img in enumerate(images)]
            )
            ok = ok.view(len(chunk), n)
            matches.append(ok)
            chosen.append(ok[torch.arange(len(chunk)), result.best])
        ok_all, picked = torch.cat(matches).float(), torch.cat(chosen).float()
        row = {
            "N": n,
            "random": float(ok_all.mean()),
            "self": float(picked.mean()),
            "oracle": float(ok_all.amax(1).mean()),
            "generation_s": gen_s,
            "rerank_s": rerank_s,
            "rerank_fraction": rerank_s / gen_s if gen_s else float("nan"),
        }
        results.append(row)
        print(
            f"{n:>3} {row['random']:>8.3f} {row['self']:>8.3f} {row['oracle']:>8.3f} {gen_s:>8.2f} {rerank_s:>9.2f} "
            f"{row['rerank_fraction']:>10.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
