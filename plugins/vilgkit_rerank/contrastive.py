"""Contrastive self-reranking: how much better a candidate explains its prompt than other prompts.

Dimension key: B prompts, N candidates per prompt, K distractor texts per prompt, L text length.
"""

from __future__ import annotations

import torch

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS
from vilgkit.self_rerank import pair_log_likelihoods
from vilgkit_rerank.simple import prompt_tensors

BASELINES = ("prompts", "shuffled")


@RERANKERS.register_module()
class PMIReranker(Reranker):
    """``log P(prompt | x) − log mean_k P(distractor_k | x)`` under the generator (name ``pmi``).

    The plain self-score ``log P(prompt | x)`` also rewards images that make *every* caption likely
    (a sparse or generic image the captioner is sure of). Subtracting how well the same image
    explains other texts keeps only what is specific to this prompt: a pointwise mutual information
    estimate with the distractors as the reference distribution of texts.

    Why this baseline: the unconditional ``log P(prompt)`` is the same for every candidate of a
    prompt, so it cannot change the choice; an image-dependent baseline is needed. The empty prompt
    ``[BOS, EOS]`` is image-dependent but the model never saw an empty caption, so its likelihood says
    how readily the model stops before any word, not what the image shows. Other prompts do: a
    candidate showing a blue square where a red circle was asked for explains a "blue square" prompt
    well and is pushed down; one showing the red circle is pushed up.

    Args:
        baseline: ``"prompts"`` (default): the other prompts of the same call, up to
            ``num_distractors`` of them (prompts ``b+1, b+2, …`` in call order, identical texts
            skipped); a prompt with no other distinct prompt in the call (e.g. one prompt to
            ``vilgkit generate``) falls back to ``"shuffled"``. ``"shuffled"``: the prompt's own words
            in a fixed shuffled order (BOS/EOS kept), a distractor with the same words whose
            likelihood the word order (which attribute goes with which object) decides.
        num_distractors: K, the most distractor texts per prompt (cost: 1 + K likelihood passes per
            candidate).
        batch_size: (candidate, text) pairs per likelihood pass.

    A prompt without any usable distractor (one word, nothing to shuffle) is scored by its plain
    log-likelihood.
    """

    needs_generator = True

    def __init__(self, baseline: str = "prompts", num_distractors: int = 3, batch_size: int = 64) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if num_distractors < 1 or batch_size < 1:
            raise ValueError("num_distractors and batch_size must be positive")
        self.baseline, self.num_distractors, self.batch_size = baseline, num_distractors, batch_size

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        ids, mask = prompt_tensors(inputs, type(self).__name__)
        n, num_prompts = inputs.num_candidates, ids.shape[0]
        texts, texts_mask, table = self.distractors(ids, mask)  # table: Long[B, K], -1 = none
        rows = torch.arange(num_prompts * n, device=ids.device)
        own = pair_log_likelihoods(inputs.generator, inputs.codes, ids, mask, rows, rows // n, self.batch_size)
        # every (candidate, distractor) pair of the candidate's prompt, in one batched stream of passes
        per_row = table.to(ids.device).repeat_interleave(n, dim=0)  # [B*N, K]
        valid = per_row >= 0
        pair_codes = rows[:, None].expand_as(per_row)[valid]
        other = torch.full(per_row.shape, float("-inf"), device=own.device)
        if bool(valid.any()):
            other[valid.to(own.device)] = pair_log_likelihoods(
                inputs.generator, inputs.codes, texts, texts_mask, pair_codes, per_row[valid], self.batch_size
            ).to(own.device)
        count = valid.sum(1).to(own.device)
        baseline = torch.logsumexp(other, dim=1) - count.clamp(min=1).float().log()
        return torch.where(count > 0, own - baseline, own)

    def distractors(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The distractor texts and, per prompt, which of them it is compared with.

        Returns:
            ``texts [T, L]``, ``texts_mask [T, L]`` (the prompts, then their shuffled forms) and
            ``table Long[B, K]``: row indices into ``texts``, ``-1`` where a prompt has fewer than K.
        """
        num_prompts, k = ids.shape[0], self.num_distractors
        shuffled, has_shuffle = _shuffled(ids, mask)
        texts, texts_mask = torch.cat([ids, shuffled]), torch.cat([mask, mask])
        keys = [tuple(row[m].tolist()) for row, m in zip(ids, mask)]
        table = torch.full((num_prompts, k), -1, dtype=torch.long)
        for b in range(num_prompts):
            others: list[int] = []
            if self.baseline == "prompts":
                seen = {keys[b]}
                for step in range(1, num_prompts):
                    j = (b + step) % num_prompts
                    if keys[j] not in seen and len(others) < k:
                        seen.add(keys[j])
                        others.append(j)
            if not others and bool(has_shuffle[b]):
                others = [num_prompts + b]
            table[b, : len(others)] = torch.tensor(others, dtype=torch.long)
        return texts, texts_mask, table


def _shuffled(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt with its words (between BOS and EOS) in a fixed pseudo-random order.

    The order depends only on the number of words (seed 0), so a prompt always gets the same
    distractor. Returns the shuffled ids and ``Bool[B]``: whether the order differs from the prompt.
    """
    out = ids.clone()
    changed = torch.zeros(ids.shape[0], dtype=torch.bool)
    for b in range(ids.shape[0]):
        words = int(mask[b].sum()) - 2  # between BOS and EOS
        if words < 2:
            continue
        perm = torch.randperm(words, generator=torch.Generator().manual_seed(0))
        if torch.equal(perm, torch.arange(words)):
            perm = perm.roll(1)
        out[b, 1 : 1 + words] = ids[b, 1 : 1 + words][perm.to(ids.device)]
        changed[b] = not torch.equal(out[b], ids[b])
    return out, changed
