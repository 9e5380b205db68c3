"""The arguments every recipe-taking subcommand shares: the recipe file and more files merged into it."""

from __future__ import annotations

import argparse


def add_recipe_arguments(parser: argparse.ArgumentParser, help: str = "recipe YAML file") -> None:
    """``RECIPE`` and ``--config MORE.yaml`` (repeatable; merged in order, later wins)."""
    parser.add_argument("recipe", help=help)
    parser.add_argument("--config", action="append", default=[], help="more recipe files, merged in order")
