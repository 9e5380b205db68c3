"""Tiny generators and recipe sections for tests: one home for the set-up many test files share.

The defaults are :meth:`UnifiedTransformer.conformance_args` (40 text / 24 image ids, 32 wide, 2
layers, 2 heads, 12 text positions, a 4x4 grid); a test names only what it changes.
"""

from __future__ import annotations

from typing import Any

import torch

CPU_STRATEGY: dict[str, Any] = {"class_path": "SingleDevice", "init_args": {"device": "cpu"}}
"""The recipe's ``strategy:`` section of every single-process CPU test run."""


def tiny_generator_kwargs(**overrides: Any) -> dict[str, Any]:
    """``UnifiedTransformer`` keyword arguments: the conformance settings with ``overrides``."""
    from vilgkit.models.unified import UnifiedTransformer

    return {**UnifiedTransformer.conformance_args(), **overrides}


def tiny_generator(seed: int | None = 0, spread: float = 0.0, **overrides: Any) -> Any:
    """A tiny ``UnifiedTransformer`` (:func:`tiny_generator_kwargs`).

    Args:
        seed: ``torch.manual_seed`` before building; ``None`` builds from the current RNG state.
        spread: when > 0, add Gaussian noise of this scale to every weight: the GPT-2 init makes an
            untrained model nearly ignore its input, which would let wrong attention pass a test.
    """
    from vilgkit.models.unified import UnifiedTransformer

    if seed is not None:
        torch.manual_seed(seed)
    model = UnifiedTransformer(**tiny_generator_kwargs(**overrides))
    if spread > 0:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * spread)
    return model


def generator_section(**init_args: Any) -> dict[str, Any]:
    """The recipe's ``generator:`` section: a one-layer, two-head, 32-wide ``UnifiedTransformer`` with
    dense attention (the vocabulary sizes come from the tokenizers), ``init_args`` replacing those."""
    defaults = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "attention": {"class_path": "DenseAttention"}}
    return {"class_path": "UnifiedTransformer", "init_args": {**defaults, **init_args}}


def tiny_shapes_sections(image_size: int = 32, vocab_size: int = 200, max_text_len: int = 32) -> dict[str, Any]:
    """The recipe's ``data``, ``text_tokenizer``, ``image_tokenizer`` and ``generator`` sections of a
    seconds-long run: 32 one-object Shapes images, a WordPiece vocabulary, a 16-code VQ-VAE that
    downsamples by 8 and a one-layer, 16-wide generator over its ``image_size // 8`` grid."""
    return {
        "data": {
            "class_path": "ShapesDataset",
            "init_args": {"split": "train", "size": 32, "image_size": image_size, "max_objects": 1, "held_out": []},
        },
        "text_tokenizer": {"class_path": "WordPieceTokenizer", "init_args": {"vocab_size": vocab_size}},
        "image_tokenizer": {
            "class_path": "VQVAETokenizer",
            "init_args": {"codebook_size": 16, "code_dim": 8, "downsample": 8, "hidden": 8},
        },
        "generator": {
            "class_path": "UnifiedTransformer",
            "init_args": {
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "max_text_len": max_text_len,
                "max_image_grid": image_size // 8,
            },
        },
    }
