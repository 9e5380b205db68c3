"""``vilgkit caption RUN_DIR IMAGE... [--method beam]``: image → text.

Prints one caption per image and writes ``captions.json`` and ``grid.png`` (captions under the
images) into ``--out``.
"""

from __future__ import annotations

import argparse

from vilgkit.commands._infer import RunSettingsHelp

HELP = "caption images with a trained run (prints captions, writes captions.json and a grid)"
HELP_ACTION = RunSettingsHelp  # -h after RUN_DIR also shows the settings that run uses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.commands import _argtypes as T
    from vilgkit.commands._infer import add_common, add_setting, add_text_decoding

    add_common(parser, "captions")
    parser.add_argument("images", nargs="+", help="image files (resized to the model's image size)")
    add_text_decoding(parser, "caption", "caption_method", ["greedy", "beam", "sample"])
    add_setting(parser, "--max-length", "the text budget", "token limit", type=T.positive_int, dest="max_text_length")


def main(args: argparse.Namespace) -> int:
    from vilgkit.commands._infer import effective_settings, load_pipeline, out_dir, save_image, write_json
    from vilgkit.pictures import load_images, make_grid, to_pil

    pipe = load_pipeline(args)
    pixels = load_images(args.images, pipe.image_size)  # fails early, naming an unreadable file
    used = effective_settings(args, pipe.settings, ["caption_method", "num_beams", "max_text_length"])
    captions = pipe.image_to_text(
        list(pixels),
        method=used["caption_method"],
        num_beams=used["num_beams"],
        max_length=used["max_text_length"],
        seed=args.seed,
    )
    out = out_dir(args)
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")
    save_image(make_grid(to_pil(pixels), ncol=min(len(captions), 8), captions=captions), out / "grid.png")
    write_json(
        out / "captions.json",
        {
            "run_dir": str(args.run_dir),
            "stage": str(pipe.stage_dir),
            "method": used["caption_method"],
            "settings": {**used, "from_run": pipe.settings.saved},
            "captions": [{"image": str(p), "caption": c} for p, c in zip(args.images, captions)],
        },
    )
    return 0
