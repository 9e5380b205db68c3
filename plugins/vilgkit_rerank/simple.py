"""Self-reranking (same weights, image→text likelihood of the prompt), its per-token form, and no reranking."""

from __future__ import annotations

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS
from vilgkit.self_rerank import self_rerank_scores

#: the precisions :class:`SelfReranker` scores in
PRECISIONS = ("fp32", "bf16")


@RERANKERS.register_module()
class SelfReranker(Reranker):
    """Score each candidate by ``log P(prompt | candidate codes)`` under the generator that sampled it.

    This is possible only because one ERNIE-ViLG model does both directions: the text→image sampler
    is also an image→text model, so no separate matching model is needed (CogView trains a separate
    captioning checkpoint for the same purpose). All ``B*N`` candidates are scored in batched
    teacher-forced passes of ``batch_size`` rows (:func:`vilgkit.self_rerank.self_rerank_scores`, the
    Pipeline's ``reranker="self"`` path too).

    Args:
        batch_size: candidates per likelihood pass (bounds memory; results do not depend on it).
        length_normalize: divide by the number of predicted prompt tokens (the real ids after BOS,
            EOS included: what the sum runs over; :class:`MeanSelfReranker`). Candidates of one prompt share
            its length, so this changes scores but never the choice; it makes scores comparable
            across prompts.
        precision: ``"fp32"``, or ``"bf16"`` to score under bf16 autocast (short name ``self_bf16``).
            On a 2-core EPYC with avx512_bf16 the demo model's passes ran 2.4–2.5× faster; scores
            moved by up to ≈ 0.2 nats, which changed the choice for 7 % of the demo's prompts and not
            its mean accuracy on five seeds (docs/performance.md, "Reranking cost").
    """

    needs_generator = True

    def __init__(self, batch_size: int = 64, length_normalize: bool = False, precision: str = "fp32") -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.batch_size = batch_size
        self.length_normalize = length_normalize
        self.precision = precision

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        text_ids, text_mask = prompt_tensors(inputs, type(self).__name__)
        bf16 = self.precision == "bf16"
        with torch.autocast(device_type=inputs.codes.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self_rerank_scores(
                inputs.generator, inputs.codes, text_ids, text_mask, inputs.num_candidates, self.batch_size
            ).flatten()
        if self.length_normalize:
            targets = (text_mask.sum(dim=1) - 1).clamp(min=1)  # BOS is read, never predicted
            out = out / targets.repeat_interleave(inputs.num_candidates).to(out)
        return out


@RERANKERS.register_module()
class MeanSelfReranker(SelfReranker):
    """``log P(prompt | candidate codes)`` divided by the prompt's real target tokens (name ``self_mean``).

    The candidates of one prompt share its length, so it keeps the same candidate as
    :class:`SelfReranker`; its scores are comparable across prompts of different lengths (a
    threshold on "is any candidate good enough" means the same for a short and a long prompt).

    Args:
        batch_size: candidates per likelihood pass.
    """

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__(batch_size=batch_size, length_normalize=True)


def prompt_tensors(inputs: RerankInputs, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts' ``ids`` and ``mask`` ``[B, L]`` on the candidates' device (mask: all real if absent)."""
    if inputs.text_ids is None:
        raise ValueError(f"{who} needs the prompts' text_ids")
    device = inputs.codes.device
    text_ids = inputs.text_ids.to(device)
    if inputs.text_mask is None:
        return text_ids, torch.ones_like(text_ids, dtype=torch.bool)
    return text_ids, inputs.text_mask.to(device)


@RERANKERS.register_module()
class NoReranker(Reranker):
    """Keep the first candidate of every prompt (equivalent to a random choice among i.i.d. samples)."""

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        n = inputs.num_candidates
        # Strictly decreasing within a group, so a stable sort keeps candidate 0 first.
        return -torch.arange(n, dtype=torch.float32).repeat(inputs.num_prompts)
