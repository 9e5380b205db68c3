"""`vilgkit eval`: not landed yet."""
from __future__ import annotations

import argparse

from vilgkit.errors import NotYetImplementedError

HELP = "eval (not implemented yet)"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise NotYetImplementedError("'eval' has not landed yet")
