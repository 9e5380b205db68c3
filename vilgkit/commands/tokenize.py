"""``vilgkit tokenize RECIPE --out DIR``: encode the recipe's data set into code shards, in one pass.

The image tokenizer comes from a trained stage output (``--image-tokenizer-from``, default
``train_tokenizer``), the text tokenizer from a fitted one (``--text-tokenizer-from``, default
``fit_text_tokenizer``); both are stage names of the recipe's run directory, paths, or ``recipe``
(the recipe's own component as built: a published ``vocab_file``, a taming checkpoint). The
source is read once (each tar of a WebDataset once, whatever ``repeat`` says), ``--workers N``
processes encode its shards in parallel, and ``--resume`` continues a killed run (see
:mod:`vilgkit.data.code_shard_writer`). Training then reads the shards with ``CodeShardDataset``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vilgkit.commands._argtypes import flags
from vilgkit.commands._recipe_args import add_recipe_arguments

HELP = "encode a data set into pre-tokenized code shards (safetensors + manifest)"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, "recipe YAML file (its `data` is encoded)")
    parser.add_argument("--out", required=True, help="output folder for the shards (new or empty)")
    parser.add_argument(
        "--image-tokenizer-from",
        default="train_tokenizer",
        help="stage name or path of the trained image tokenizer, or `recipe` (the recipe's, as built)",
    )
    parser.add_argument(
        "--text-tokenizer-from",
        default="fit_text_tokenizer",
        help="stage name or path of the fitted text tokenizer, or `recipe` (the recipe's, as built)",
    )
    parser.add_argument("--shard-size", type=int, default=1024, help="samples per shard")
    parser.add_argument("--batch-size", type=int, default=32, help="images encoded per forward pass")
    parser.add_argument("--limit", type=int, default=None, help="encode at most this many samples")
    parser.add_argument("--max-text-len", type=int, default=None, help="truncate token ids to this length")
    parser.add_argument("--device", default="cpu", help="device for the image tokenizer (cpu, cuda)")
    parser.add_argument("--workers", type=int, default=1, help="processes encoding shards in parallel (CPU)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted tokenize in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from vilgkit.components import ComponentStore
    from vilgkit.data.code_shard_writer import write_code_shards
    from vilgkit.engine.runner import resolve
    from vilgkit.errors import VilgkitError
    from vilgkit.interfaces import RunContext
    from vilgkit.stages.fit_text_tokenizer import load_text_tokenizer
    from vilgkit.stages.train_tokenizer import load_image_tokenizer

    recipe = resolve([args.recipe, *args.config], getattr(args, "overrides", None) or [])
    ctx = RunContext(
        run_dir=Path(recipe["run_dir"]),
        components=ComponentStore(recipe),
        recipe=recipe,
        seed=int(recipe.get("seed", 0)),
    )
    if args.text_tokenizer_from == "recipe":
        text_tokenizer = ctx.component("text_tokenizer")
        if not text_tokenizer.is_fitted:
            raise VilgkitError(
                "--text-tokenizer-from recipe needs a ready tokenizer (e.g. a vocab_file); "
                "this one must be fitted first: run the FitTextTokenizer stage"
            )
    else:
        text_tokenizer = load_text_tokenizer(ctx, args.text_tokenizer_from)
    if args.image_tokenizer_from == "recipe":
        image_tokenizer = ctx.component("image_tokenizer").to(args.device)
    else:
        image_tokenizer = load_image_tokenizer(ctx, args.image_tokenizer_from).to(args.device)
    dataset = ctx.component("data")
    manifest = write_code_shards(
        dataset,
        image_tokenizer,
        text_tokenizer,
        args.out,
        **flags(args, "shard_size", "batch_size", "limit", "max_text_len", "workers", "resume"),
        progress=not args.no_progress,
        description=recipe.get("data") or {},
    )
    print(
        f"vilgkit: wrote {manifest['num_samples']} samples in {len(manifest['shards'])} shard(s) to {args.out} "
        f"(codes {manifest['grid'][0]}x{manifest['grid'][1]}, {manifest['truncated']} texts truncated, "
        f"{sum(manifest['skipped'].values())} samples skipped)"
    )
    return 0
