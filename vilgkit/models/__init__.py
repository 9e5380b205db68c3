"""Core generator models (registered in ``GENERATORS`` on import)."""
from vilgkit.models.cache import KVCache
from vilgkit.models.default_pattern import DefaultDensePattern
from vilgkit.models.unified import UnifiedTransformer

__all__ = ["DefaultDensePattern", "KVCache", "UnifiedTransformer"]
