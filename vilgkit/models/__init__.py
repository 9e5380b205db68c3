"""Core generator models (registered in ``GENERATORS`` on import)."""

from vilgkit.models.cache import KVCache
from vilgkit.models.dense_attention import DenseAttention
from vilgkit.models.unified import UnifiedTransformer

__all__ = ["DenseAttention", "KVCache", "UnifiedTransformer"]
