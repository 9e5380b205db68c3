"""An example third-party vilgkit plugin: ``BandAttention``.

Importing this module registers the pattern in ``ATTENTION_PATTERNS``; vilgkit imports it through
the ``vilgkit`` entry point declared in this distribution's ``pyproject.toml``.
"""

from __future__ import annotations

import torch

from vilgkit.interfaces import AttentionPattern
from vilgkit.layout import Layout
from vilgkit.registry import ATTENTION_PATTERNS


@ATTENTION_PATTERNS.register_module()
class BandAttention(AttentionPattern):
    """Sources attend to the whole source; each target sees the source and the last ``width``
    target positions (itself included).

    Args:
        width: how many target positions (ending at the query) a target query sees.
    """

    def __init__(self, width: int = 2) -> None:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.width = width

    def allowed(self, layer: int, num_layers: int, layout: Layout) -> torch.Tensor:
        n, src = layout.length, layout.source_length
        pos = torch.arange(n)
        mask = torch.zeros(n, n, dtype=torch.bool)
        mask[:src, :src] = True  # the source is bidirectional
        mask[src:, :src] = True  # targets see the whole source
        q, k = pos[src:, None], pos[None, src:]
        mask[src:, src:] = (k <= q) & (k > q - self.width)  # causal band over targets
        return mask
