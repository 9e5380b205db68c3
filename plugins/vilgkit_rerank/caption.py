"""Caption-compare reranking: the generator captions each candidate, the caption is compared with the prompt.

Dimension key: B prompts, N candidates per prompt, L text length.
"""

from __future__ import annotations

from collections import Counter

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS
from vilgkit.self_rerank import pair_log_likelihoods
from vilgkit_rerank.simple import prompt_tensors

MODES = ("overlap", "agreement")
#: weight of the likelihood tie-break in ``overlap`` mode (it adds at most this): two different F1
#: values 2m/T of texts up to 64 tokens (T ≤ 254 n-grams) differ by at least 2 / 254² > 3e-5
TIE_BREAK = 1e-5


@RERANKERS.register_module()
class CaptionReranker(Reranker):
    """Caption every candidate (greedy, same generator) and score how well the caption agrees with the prompt.

    Where :class:`SelfReranker` asks "how likely is the prompt given this image", this asks "what
    does the model say this image shows": a candidate whose own caption names other objects, colours
    or positions than the prompt is pushed down even when the prompt is still fairly likely.

    Args:
        mode: ``"overlap"`` (default): F1 of the caption's and the prompt's token uni- and bigrams
            (the bigrams keep which attribute goes with which word); equal overlaps are ordered by
            ``exp(mean log P(prompt | x))`` added with weight ``TIE_BREAK``, too small to reorder
            different overlaps. ``"agreement"``: ``mean log P(prompt | x) − mean log P(caption | x)``
            per token — 0 when the prompt is as likely as the model's own caption, below 0 by how
            much less likely it is.
        batch_size: candidates per captioning and likelihood pass.
        max_length: caption token budget (default: the generator's text budget less BOS and EOS).
    """

    needs_generator = True

    def __init__(self, mode: str = "overlap", batch_size: int = 64, max_length: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1 or (max_length is not None and max_length < 1):
            raise ValueError("batch_size and max_length must be positive")
        self.mode, self.batch_size, self.max_length = mode, batch_size, max_length

    def captions(self, inputs: RerankInputs, text_len: int) -> list[list[int]]:
        """The greedy caption ids of every candidate (``B*N`` lists, without BOS/EOS)."""
        gen = inputs.generator
        budget = int(getattr(gen, "max_text_len", text_len + 2)) - 2  # room for BOS and EOS
        length = max(1, min(self.max_length or budget, budget))
        out: list[list[int]] = []
        for i in range(0, inputs.codes.shape[0], self.batch_size):
            out += gen.generate_text(inputs.codes[i : i + self.batch_size], max_length=length, method="greedy")
        return out

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        ids, mask = prompt_tensors(inputs, type(self).__name__)
        n = inputs.num_candidates
        captions = self.captions(inputs, ids.shape[1])
        rows = torch.arange(ids.shape[0] * n, device=ids.device)
        targets = (mask.sum(1) - 1).clamp(min=1).repeat_interleave(n).float()  # BOS is never predicted
        prompt_ll = pair_log_likelihoods(inputs.generator, inputs.codes, ids, mask, rows, rows // n, self.batch_size)
        prompt_mean = prompt_ll / targets.to(prompt_ll)
        if self.mode == "agreement":
            cap_ids, cap_mask = _as_texts(captions, ids, mask, n)
            gen = inputs.generator
            cap_ll = pair_log_likelihoods(gen, inputs.codes, cap_ids, cap_mask, rows, rows, self.batch_size)
            return prompt_mean - cap_ll / (cap_mask.sum(1) - 1).clamp(min=1).to(cap_ll)
        words = [row[1 : int(m.sum()) - 1].tolist() for row, m in zip(ids, mask)]  # between BOS and EOS
        overlap = torch.tensor([ngram_f1(c, words[r // n]) for r, c in enumerate(captions)], dtype=torch.float64)
        return (overlap + TIE_BREAK * prompt_mean.double().exp().cpu()).to(prompt_ll)


def ngram_f1(candidate: list[int], reference: list[int]) -> float:
    """F1 of the multisets of uni- and bigrams of two token sequences (1.0 for two empty ones)."""
    a, b = _ngrams(candidate), _ngrams(reference)
    total = sum(a.values()) + sum(b.values())
    if total == 0:
        return 1.0
    return 2.0 * sum((a & b).values()) / total


def _ngrams(tokens: list[int]) -> Counter:
    return Counter([(t,) for t in tokens] + list(zip(tokens, tokens[1:])))


def _as_texts(
    captions: list[list[int]], ids: torch.Tensor, mask: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions → ``BOS … EOS`` id rows (BOS and EOS copied from each candidate's prompt), right-padded."""
    lengths = mask.sum(1)
    width = max(len(c) for c in captions) + 2
    # padding positions are masked out; any valid id fills them (the first prompt's BOS)
    out = torch.full((len(captions), width), int(ids[0, 0]), dtype=torch.long, device=ids.device)
    out_mask = torch.zeros(out.shape, dtype=torch.bool, device=ids.device)
    for r, cap in enumerate(captions):
        b = r // n
        row = [int(ids[b, 0]), *cap, int(ids[b, int(lengths[b]) - 1])]
        out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        out_mask[r, : len(row)] = True
    return out, out_mask
