"""``vilgkit caption RUN_DIR IMAGE... [--method beam]``: image → text.

Prints one caption per image and writes ``captions.json`` and ``grid.png`` (captions under the
images) into ``--out``.
"""
from __future__ import annotations

import argparse

HELP = "caption images with a trained run (prints captions, writes captions.json and a grid)"
ACCEPTS_OVERRIDES = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.commands._infer import add_common

    add_common(parser, "captions")
    parser.add_argument("images", nargs="+", help="image files (resized to the model's image size)")
    parser.add_argument("--method", choices=["greedy", "beam", "sample"], default="greedy")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=None, help="token limit (default: the text budget)")


def main(args: argparse.Namespace) -> int:
    from vilgkit.pictures import load_images, make_grid, to_pil
    from vilgkit.commands._infer import load_pipeline, out_dir, write_json

    pipe = load_pipeline(args)
    pixels = load_images(args.images, pipe.image_size)  # fails early, naming an unreadable file
    captions = pipe.image_to_text(list(pixels), method=args.method, num_beams=args.num_beams, max_length=args.max_length, seed=args.seed)
    out = out_dir(args)
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")
    make_grid(to_pil(pixels), ncol=min(len(captions), 8), captions=captions).save(out / "grid.png")
    write_json(out / "captions.json", {"run_dir": str(args.run_dir), "stage": str(pipe.stage_dir), "method": args.method,
                                       "captions": [{"image": str(p), "caption": c} for p, c in zip(args.images, captions)]})  # fmt: skip
    return 0
