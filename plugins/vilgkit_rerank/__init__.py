"""Built-in vilgkit plugin: rerankers (best of N sampled images per prompt, paper §4.2).

``SelfReranker`` scores with the generator's own image→text likelihood (``MeanSelfReranker`` per
token), ``PMIReranker`` contrasts it with the likelihood of other prompts, ``CaptionReranker``
compares the generator's caption of each candidate with the prompt, ``MatcherReranker`` scores
with the run's own image–text matching model (a ``TrainMatcher`` stage; ``PixelMatcherReranker``
when that model reads decoded pixels), ``ClipReranker`` scores with an
open_clip model loaded from a local file (optional extra ``clip``), ``NoReranker`` keeps the first
candidate (a random choice among i.i.d. samples), ``ConsensusReranker`` keeps the candidate whose
decoded image is closest to the prompt's other candidates, ``EnsembleReranker`` sums several
members' per-prompt standardised scores (``self_bf16+consensus``, the demo's).
Short names: :mod:`vilgkit.reranker_names`.
"""

from vilgkit_rerank.caption import CaptionReranker
from vilgkit_rerank.clip import ClipReranker
from vilgkit_rerank.consensus import ConsensusReranker
from vilgkit_rerank.contrastive import PMIReranker
from vilgkit_rerank.ensemble import EnsembleReranker
from vilgkit_rerank.matcher import MatcherReranker, PixelMatcherReranker
from vilgkit_rerank.simple import MeanSelfReranker, NoReranker, SelfReranker

__all__ = [
    "CaptionReranker",
    "ClipReranker",
    "ConsensusReranker",
    "EnsembleReranker",
    "MatcherReranker",
    "MeanSelfReranker",
    "NoReranker",
    "PMIReranker",
    "PixelMatcherReranker",
    "SelfReranker",
]
