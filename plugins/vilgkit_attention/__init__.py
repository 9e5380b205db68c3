"""Built-in vilgkit plugin: attention patterns (dense; sparse row / column / convolutional).

Importing the package registers ``DenseAttention`` and ``SparseAttention`` in ``ATTENTION_PATTERNS``.
"""
from vilgkit_attention.dense import DenseAttention
from vilgkit_attention.masks import build_allowed, image_key_pattern
from vilgkit_attention.sparse import SparseAttention, paper_schedule

__all__ = ["DenseAttention", "SparseAttention", "build_allowed", "image_key_pattern", "paper_schedule"]
