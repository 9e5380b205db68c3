"""``vilgkit vqa RUN_DIR --image IMG --question Q [--question Q2 ...]``: answer questions about images.

``--image`` and ``--question`` pair up in order; one image with several questions is asked each of
them. Prints the answers and writes ``answers.json`` and ``grid.png`` (question → answer under each
image) into ``--out``.
"""

from __future__ import annotations

import argparse

from vilgkit.commands._infer import RunSettingsHelp

HELP = "answer questions about images with a trained run (prints answers, writes answers.json and a grid)"
HELP_ACTION = RunSettingsHelp  # -h after RUN_DIR also shows the settings that run uses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.commands import _argtypes as T
    from vilgkit.commands._infer import add_common, add_text_decoding

    add_common(parser, "answers")
    parser.add_argument("--image", action="append", required=True, help="an image file (repeatable)")
    parser.add_argument("--question", action="append", required=True, type=T.text, help="a question (repeatable)")
    add_text_decoding(parser, "answer", "answer_method", ["greedy", "beam"])
    parser.add_argument("--truncate", action="store_true", help="cut over-long questions instead of failing")


def main(args: argparse.Namespace) -> int:
    from vilgkit.commands._infer import effective_settings, load_pipeline, out_dir, save_image, write_json
    from vilgkit.errors import VilgkitError
    from vilgkit.pictures import load_images, make_grid, to_pil

    images, questions = list(args.image), list(args.question)
    if len(images) == 1 and len(questions) > 1:
        images = images * len(questions)
    if len(images) != len(questions):
        raise VilgkitError(f"vilgkit vqa: {len(images)} --image but {len(questions)} --question; pair them up")
    pipe = load_pipeline(args)
    pixels = load_images(images, pipe.image_size)
    used = effective_settings(args, pipe.settings, ["answer_method", "num_beams"])
    answers = pipe.answer(
        list(pixels), questions, method=used["answer_method"], num_beams=used["num_beams"], truncate=args.truncate
    )
    out = out_dir(args)
    for q, a in zip(questions, answers):
        print(f"{q}\t{a}")
    labels = [f"Q: {q} A: {a}" for q, a in zip(questions, answers)]
    save_image(
        make_grid(to_pil(pixels), ncol=min(len(labels), 6), captions=labels, caption_width=200), out / "grid.png"
    )
    write_json(
        out / "answers.json",
        {
            "run_dir": str(args.run_dir),
            "stage": str(pipe.stage_dir),
            "settings": {**used, "from_run": pipe.settings.saved},
            "answers": [{"image": i, "question": q, "answer": a} for i, q, a in zip(images, questions, answers)],
        },
    )
    return 0
