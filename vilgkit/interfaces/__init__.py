"""The abstract interfaces of docs/architecture.md §3. Core depends only on these; plugins implement them."""

from vilgkit.interfaces.attention import AttendContext, AttentionPattern
from vilgkit.interfaces.decode_cache import CacheGeometry, DecodeCache, StepKeys
from vilgkit.interfaces.generator import Generator, GeneratorOutput
from vilgkit.interfaces.image_tokenizer import ImageTokenizer
from vilgkit.interfaces.parallel import MemoryPlan, ParallelStrategy, StrategyLayout
from vilgkit.interfaces.reconstructor import Reconstructor
from vilgkit.interfaces.reranker import Reranker, RerankInputs, RerankResult
from vilgkit.interfaces.stage import RunContext, Stage
from vilgkit.interfaces.text_tokenizer import TextTokenizer
from vilgkit.interfaces.trainable import Trainable

__all__ = [
    "AttendContext",
    "AttentionPattern",
    "CacheGeometry",
    "DecodeCache",
    "Generator",
    "GeneratorOutput",
    "ImageTokenizer",
    "MemoryPlan",
    "ParallelStrategy",
    "Reconstructor",
    "RerankInputs",
    "RerankResult",
    "Reranker",
    "RunContext",
    "Stage",
    "StepKeys",
    "StrategyLayout",
    "TextTokenizer",
    "Trainable",
]
