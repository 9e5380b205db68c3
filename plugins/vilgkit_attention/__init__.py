"""Built-in vilgkit plugin: sparse attention patterns (row / column / convolutional).

Importing the package registers ``SparseAttention`` in ``ATTENTION_PATTERNS`` (the dense pattern,
``DenseAttention``, is core: :mod:`vilgkit.models.dense_attention`).
"""

from vilgkit_attention.masks import build_allowed, image_key_pattern
from vilgkit_attention.sparse import SparseAttention, paper_schedule

__all__ = ["SparseAttention", "build_allowed", "image_key_pattern", "paper_schedule"]
