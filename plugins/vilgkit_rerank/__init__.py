"""Built-in vilgkit plugin: rerankers (best of N sampled images per prompt, paper §4.2).

``SelfReranker`` scores with the generator's own image→text likelihood, ``ClipReranker`` with an
open_clip model loaded from a local file (optional extra ``clip``), ``NoReranker`` keeps the first
candidate (a random choice among i.i.d. samples).
"""

from vilgkit_rerank.clip import ClipReranker
from vilgkit_rerank.simple import NoReranker, SelfReranker

__all__ = ["ClipReranker", "NoReranker", "SelfReranker"]
