"""The generator the benchmarks time: its size options and how it is built, in one place.

``bench_attention``, ``bench_generator`` and ``bench_memory_plan`` build it here, so they time the
same model (weights from seed 0) and their size options mean the same thing with the same
defaults. A benchmark imports this module by name: its folder is on ``sys.path`` when one runs as a
script.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from vilgkit.models import UnifiedTransformer


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """``--layers``, ``--hidden``, ``--heads`` of the generator and ``--kernel`` of its sparse schedule."""
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks")
    parser.add_argument("--hidden", type=int, default=512, help="model width")
    parser.add_argument("--heads", type=int, default=8, help="attention heads")
    parser.add_argument("--kernel", type=int, default=11, help="conv kernel of the sparse schedule")


def build_generator(
    hidden: int,
    layers: int,
    heads: int,
    text_len: int,
    grid: int,
    attention: Any = None,
    *,
    text_vocab: int = 1000,
    image_vocab: int = 1024,
) -> UnifiedTransformer:
    """A ``UnifiedTransformer`` with weights from seed 0 (``attention``: its pattern; None = dense)."""
    torch.manual_seed(0)
    return UnifiedTransformer(
        text_vocab,
        image_vocab,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        max_text_len=text_len,
        max_image_grid=grid,
        attention=attention,
    )
