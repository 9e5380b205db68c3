"""An ablation between dense and sparse attention is a one-line recipe change."""

from __future__ import annotations

import torch

from vilgkit.layout import Layout
from vilgkit.models import DenseAttention
from vilgkit.plugins import get_plugin_manager
from vilgkit.recipe import build, parse_recipe, to_dict
from vilgkit_attention import SparseAttention

RECIPE = "recipes/debug/gen_tiny.yaml"


def _attention(overrides):
    import vilgkit.builtins  # noqa: F401  (core components, as the CLI loads them)

    get_plugin_manager()  # built-in plugins
    cfg = parse_recipe([RECIPE], overrides)
    return build("generator", to_dict(cfg)["generator"]).attention


def test_recipe_switches_dense_to_sparse_schedule():
    assert isinstance(_attention([]), DenseAttention)
    sparse = _attention(
        [
            "--generator.init_args.attention",
            "{class_path: SparseAttention, init_args: {kernel_size: 3, schedule: [row, conv]}}",
        ]
    )
    assert isinstance(sparse, SparseAttention)
    assert (sparse.kernel_size, sparse.schedule) == (3, ["row", "conv"])
    layout = Layout.text_to_image(3, 4, 4)
    assert torch.equal(
        sparse.allowed(1, 2, layout), SparseAttention(kernel_size=3, schedule="conv").allowed(0, 1, layout)
    )
