"""Shared helpers for the generator tests: tiny models and an independent mask oracle."""

from __future__ import annotations

import pytest
import torch

from vilgkit.interfaces.attention import AttentionPattern
from vilgkit.layout import Layout
from vilgkit.models import UnifiedTransformer
from vilgkit.testing.tiny import tiny_generator


def reference_allowed(layout: Layout, image_rule) -> torch.Tensor:
    """docs/architecture.md §2 written out query by query (slow, obviously correct).

    ``image_rule(qr, qc, kr, kc) -> bool`` is the layer's pattern over image keys.
    """
    N, S = layout.length, layout.source_length
    where = []  # per position: (segment index, index within segment)
    for si, seg in enumerate(layout.segments):
        where += [(si, j) for j in range(seg.length)]
    segs = layout.segments
    allowed = torch.zeros(N, N, dtype=torch.bool)
    for q in range(N):
        qs, qj = where[q]
        for k in range(N):
            ks, kj = where[k]
            if q < S and k >= S:
                ok = False  # the source never sees the target
            elif q >= S and k < S:
                ok = True  # the target sees every source key
            elif q >= S and k > q:
                ok = False  # causal target
            else:
                ok = True
            if ok and qs == ks and segs[qs].kind == "image":
                w = segs[qs].grid[1]
                ok = image_rule(qj // w, qj % w, kj // w, kj % w)
            allowed[q, k] = ok
    return allowed


class ReferenceSparsePattern(AttentionPattern):
    """Row / column (i % 4 == 2) / conv (last layer) per the paper, from :func:`reference_allowed`.

    Only ``allowed`` is defined, so the model derives decode keys from the oracle rows and the
    training pass uses the base class's SDPA-with-mask: an independent check of the gather path.
    """

    def __init__(self, kernel: int = 3) -> None:
        self.kernel = kernel
        self._memo: dict = {}

    def kind(self, layer: int, num_layers: int) -> str:
        if layer == num_layers - 1:
            return "conv"
        return "column" if layer % 4 == 2 else "row"

    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        kind, half = self.kind(layer, num_layers), self.kernel // 2
        rules = {
            "row": lambda qr, qc, kr, kc: qr == kr,
            "column": lambda qr, qc, kr, kc: qc == kc,
            "conv": lambda qr, qc, kr, kc: abs(qr - kr) <= half and abs(qc - kc) <= half,
        }
        key = (kind, layout)
        if key not in self._memo:
            self._memo[key] = reference_allowed(layout, rules[kind])
        return self._memo[key]


# the generator of most model tests: four layers and heads, 30 text / 20 image ids, 10 text positions
TINY_MODEL = dict(text_vocab_size=30, image_vocab_size=20, num_layers=4, num_heads=4, max_text_len=10)


def tiny_model(attention: AttentionPattern | None = None, **overrides) -> UnifiedTransformer:
    """:data:`TINY_MODEL` from seed 0, its weights spread out, in eval mode."""
    return tiny_generator(seed=0, spread=0.15, attention=attention, **{**TINY_MODEL, **overrides}).eval()


def _patterns() -> list:
    params = [
        pytest.param(lambda: None, id="default-dense"),
        pytest.param(ReferenceSparsePattern, id="reference-sparse"),
    ]
    try:
        import vilgkit_attention as plugin
    except ImportError:  # the plugin is optional for core tests
        return params
    from vilgkit.testing.components import build_component

    for name in ("DenseAttention", "SparseAttention", "SparseAttentionPattern"):
        if hasattr(plugin, name):
            cls = getattr(plugin, name)
            params.append(pytest.param(lambda cls=cls: build_component(cls), id=f"plugin-{name}"))
    return params


PATTERNS = _patterns()
