"""``vilgkit print-config RECIPE [overrides]``: the fully resolved recipe as YAML."""

from __future__ import annotations

import argparse

import yaml

from vilgkit.commands._recipe_args import add_recipe_arguments

HELP = "print the fully resolved recipe (full class paths, defaults, linked values)"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from vilgkit.engine.runner import resolve

    recipe = resolve([args.recipe, *args.config], args.overrides)
    print(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), end="")
    return 0
