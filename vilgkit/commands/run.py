"""``vilgkit run RECIPE [--stages a,b] [--resume] [--config more.yaml] [--a.b.c VALUE ...]``."""

from __future__ import annotations

import argparse

from vilgkit.commands._recipe_args import add_recipe_arguments

HELP = "run a recipe's stages (train tokenizer, train generator, fine-tune, evaluate...)"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--stages", default=None, help="comma-separated subset of the recipe's stages")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoints")
    parser.add_argument(
        "--skip-preflight",
        action="store_true",
        help="run even when the plan says a training stage does not fit this machine",
    )


def main(args: argparse.Namespace) -> int:
    from vilgkit.engine.runner import run

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    ctx = run(
        [args.recipe, *args.config],
        args.overrides,
        stages=stages,
        resume=args.resume,
        debug=getattr(args, "debug", False),
        preflight=not args.skip_preflight,
    )
    print(f"vilgkit: run finished; outputs in {ctx.run_dir}")
    return 0
