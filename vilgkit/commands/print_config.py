"""``vilgkit print-config RECIPE [overrides]``: the fully resolved recipe as YAML."""
from __future__ import annotations

import argparse

import yaml

HELP = "print the fully resolved recipe (full class paths, defaults, linked values)"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--config", action="append", default=[], help="more recipe files, merged in order")


def main(args: argparse.Namespace) -> int:
    from vilgkit.engine.runner import resolve

    recipe = resolve([args.recipe, *args.config], args.overrides)
    print(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), end="")
    return 0
