"""``vilgkit generate RUN_DIR PROMPT... [--num-candidates N --reranker self --out DIR]``: text → image.

Writes one PNG per prompt (``prompt_000.png``, the best candidate; with ``--all`` every candidate as
``prompt_000_cand_00.png``), a ``grid.png`` with the prompts under the images, and
``generate.json`` with the prompts, files and exact sampling settings.
"""
from __future__ import annotations

import argparse

HELP = "generate images from text prompts with a trained run (PNG files and a grid)"
ACCEPTS_OVERRIDES = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.commands._infer import add_common

    add_common(parser, "generated")
    parser.add_argument("prompts", nargs="*", help="text prompts")
    parser.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    parser.add_argument("--num-candidates", type=int, default=8, help="candidates sampled per prompt")
    parser.add_argument("--reranker", default="self", help="'self' (log P(prompt|image)), 'none' or a reranker name")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--truncate", action="store_true", help="cut over-long prompts instead of failing")
    parser.add_argument("--all", action="store_true", help="also write every candidate, best first")


def main(args: argparse.Namespace) -> int:
    from vilgkit.pictures import make_grid
    from vilgkit.commands._infer import load_pipeline, out_dir, read_lines, write_json
    from vilgkit.errors import VilgkitError

    prompts = list(args.prompts) + read_lines(args.prompts_file)
    if not prompts:
        raise VilgkitError("vilgkit generate: give at least one prompt (or --prompts-file)")
    pipe = load_pipeline(args)
    reranker = None if args.reranker in ("none", "None", "") else args.reranker
    out = out_dir(args)
    results = pipe.text_to_image(
        prompts, num_candidates=args.num_candidates, reranker=reranker, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale,
        truncate=args.truncate, return_all=True,
    )  # fmt: skip
    files, best = [], []
    for i, candidates in enumerate(results):
        path = out / f"prompt_{i:03d}.png"
        candidates[0].save(path)
        files.append(path.name)
        best.append(candidates[0])
        if args.all:
            for j, img in enumerate(candidates):
                img.save(out / f"prompt_{i:03d}_cand_{j:02d}.png")
    make_grid(best, ncol=min(len(best), 8), captions=prompts).save(out / "grid.png")
    settings = {k: getattr(args, k) for k in ("num_candidates", "reranker", "seed", "temperature", "top_k", "top_p", "cfg_scale", "truncate")}
    write_json(out / "generate.json", {"run_dir": str(args.run_dir), "stage": str(pipe.stage_dir), "prompts": prompts,
                                       "files": files, "settings": settings})  # fmt: skip
    print(f"vilgkit generate: {len(files)} image(s) and grid.png written to {out}")
    return 0
