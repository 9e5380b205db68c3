"""``vilgkit generate RUN_DIR PROMPT... [--num-candidates N --reranker self --out DIR]``: text → image.

Writes one PNG per prompt (``prompt_000.png``, the best candidate; with ``--all`` every candidate as
``prompt_000_cand_00.png``), a ``grid.png`` with the prompts under the images, and
``generate.json`` with the prompts, files and exact sampling settings.
"""

from __future__ import annotations

import argparse

from vilgkit.commands._infer import RunSettingsHelp

HELP = "generate images from text prompts with a trained run (PNG files and a grid)"
HELP_ACTION = RunSettingsHelp  # -h after RUN_DIR also shows the settings that run uses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.commands import _argtypes as T
    from vilgkit.commands._infer import add_common, add_setting

    add_common(parser, "generated")
    parser.add_argument("prompts", nargs="*", type=T.text, help="text prompts")
    parser.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    add_setting(parser, "--num-candidates", 8, "candidates sampled per prompt", type=T.positive_int)
    add_setting(
        parser,
        "--reranker",
        "self",
        "self (log P(prompt|image)), self_mean, pmi, pmi_shuffled, caption, caption_agreement, none, clip "
        "or a RERANKERS name (docs/evaluation.md)",
    )
    parser.add_argument("--clip-weights", default=None, help="local open_clip checkpoint for --reranker clip")
    parser.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture for --reranker clip")
    add_setting(parser, "--temperature", 1.0, "sampling temperature (0: greedy)", type=T.non_negative_float)
    add_setting(parser, "--top-k", "off", "sample among the k likeliest codes (0: off)", type=T.non_negative_int)
    add_setting(parser, "--top-p", "off", "nucleus sampling mass (1.0: off)", type=T.probability)
    add_setting(parser, "--cfg-scale", 1.0, "classifier-free guidance scale (1.0: none)", type=T.non_negative_float)
    # the CLI's own defaults for a run without saved settings (it always reranked the best of 8)
    parser.set_defaults(_fallback={"num_candidates": 8, "reranker": "self"})
    parser.add_argument("--truncate", action="store_true", help="cut over-long prompts instead of failing")
    parser.add_argument("--all", action="store_true", help="also write every candidate, best first")


def main(args: argparse.Namespace) -> int:
    from vilgkit.commands._infer import effective_settings, load_pipeline, out_dir, read_lines, save_image, write_json
    from vilgkit.errors import VilgkitError
    from vilgkit.pictures import make_grid

    prompts = list(args.prompts) + read_lines(args.prompts_file)
    if not prompts:
        raise VilgkitError("vilgkit generate: give at least one prompt (or --prompts-file)")
    pipe = load_pipeline(args)
    names = ["num_candidates", "reranker", "temperature", "top_k", "top_p", "cfg_scale"]
    used = effective_settings(args, pipe.settings, names)
    reranker = used["reranker"]
    if isinstance(reranker, str) and reranker.lower() not in ("self", "none"):
        from vilgkit.commands._infer import build_reranker

        # built (and its needs checked: an unknown name, open_clip, local weights) before any sampling
        reranker = build_reranker(reranker, args.clip_weights, args.clip_model) or "none"
    codes = int(pipe.image_tokenizer.codebook_size)
    if (used["top_k"] or 0) > codes:
        raise VilgkitError(
            f"--top-k {used['top_k']}: at most the image vocabulary of this run ({codes} codes); 0 is off"
        )
    out = out_dir(args)
    results = pipe.text_to_image(
        prompts,
        num_candidates=used["num_candidates"],
        reranker=reranker,
        seed=args.seed,
        temperature=used["temperature"],
        top_k=used["top_k"] or 0,  # 0 / 1.0: off, not "the run's value"
        top_p=1.0 if used["top_p"] is None else used["top_p"],
        cfg_scale=used["cfg_scale"],
        truncate=args.truncate,
        return_all=True,
    )
    files, best = [], []
    for i, candidates in enumerate(results):
        path = out / f"prompt_{i:03d}.png"
        save_image(candidates[0], path)
        files.append(path.name)
        best.append(candidates[0])
        if args.all:
            for j, img in enumerate(candidates):
                save_image(img, out / f"prompt_{i:03d}_cand_{j:02d}.png")
    save_image(make_grid(best, ncol=min(len(best), 8), captions=prompts), out / "grid.png")
    settings = {**used, "seed": args.seed, "truncate": args.truncate, "from_run": pipe.settings.saved}
    write_json(
        out / "generate.json",
        {
            "run_dir": str(args.run_dir),
            "stage": str(pipe.stage_dir),
            "prompts": prompts,
            "files": files,
            "settings": settings,
        },
    )
    print(f"vilgkit generate: {len(files)} image(s) and grid.png written to {out}")
    return 0
