"""Built-in vilgkit plugin: attention patterns (dense; sparse row / column / convolutional).

Importing the package registers its patterns in ``ATTENTION_PATTERNS``.
"""
from vilgkit_attention.dense import DenseAttention
from vilgkit_attention.masks import build_allowed, image_key_pattern

__all__ = ["DenseAttention", "build_allowed", "image_key_pattern"]
