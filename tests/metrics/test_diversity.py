"""Candidate diversity: the share of distinct code sequences and the mean pairwise code difference."""

from __future__ import annotations

import json

import pytest
import torch

from tests.metrics.test_evaluate import _Oracle
from vilgkit.data import ShapesDataset
from vilgkit.metrics.diversity import CandidateDiversity, candidate_diversity, per_prompt_diversity
from vilgkit.metrics.harness import SamplingSettings, evaluate


def test_known_cases():
    same = torch.zeros(4, 2, 2, dtype=torch.long)  # one prompt, 4 identical candidates
    assert candidate_diversity(same, 4) == {
        "distinct_share": 0.25,
        "mean_code_difference": 0.0,
        "num_prompts": 1.0,
        "num_candidates": 4.0,
    }
    # prompt 0: all different everywhere; prompt 1: candidate 0 differs from 1 and 2 (identical)
    # in 1 of 4 positions → ordered pairs (0,1),(0,2),(1,0),(2,0) at 0.25, (1,2),(2,1) at 0
    codes = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    per = per_prompt_diversity(codes.view(6, 2, 2), 3)
    torch.testing.assert_close(per["distinct_share"], torch.tensor([1.0, 2 / 3]))
    torch.testing.assert_close(per["mean_code_difference"], torch.tensor([1.0, 4 * 0.25 / 6]))
    acc = CandidateDiversity(3)
    acc.update(codes[:3].view(3, 2, 2))
    acc.update(codes[3:].view(3, 2, 2))  # accumulated over batches = all at once
    assert acc.compute() == pytest.approx(candidate_diversity(codes.view(6, 2, 2), 3))
    single = candidate_diversity(torch.arange(3).view(3, 1, 1), 1)
    assert single["distinct_share"] == 1.0 and single["mean_code_difference"] == 0.0
    with pytest.raises(ValueError, match="groups of 4"):
        candidate_diversity(codes, 4)


class _Repeating(_Oracle):
    """The harness's oracle pipeline, but candidate 0 is the true image and candidates 1.. repeat one blank code."""

    def sample_codes(self, prompts, num_candidates, *, seed, **sampling):
        codes, ids, mask = super().sample_codes(prompts, num_candidates, seed=seed)
        codes = codes.view(len(prompts), num_candidates)
        codes = torch.cat([codes[:, :1] + 1, torch.zeros_like(codes[:, 1:])], dim=1)  # j = 1 decodes true
        return codes.view(-1, 1, 1), ids, mask


def test_best_of_n_evaluation_reports_diversity_in_eval_json(tmp_path):
    data = ShapesDataset(split="test", size=4, image_size=64, seed=5, held_out=[])
    record = evaluate(
        _Repeating(data, 4),
        data,
        metrics=["shapes"],
        out_dir=tmp_path,
        num_samples=4,
        batch_size=3,  # two batches: the numbers are accumulated
        sampling=SamplingSettings(num_candidates=4),
        report_examples=0,
        log=lambda s: None,
    )
    m = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert m == record["metrics"]
    assert m["candidate_distinct_share"] == pytest.approx(0.5)  # 2 distinct of 4
    assert m["candidate_code_difference"] == pytest.approx(6 / 12)  # 6 of 12 ordered pairs differ
    assert m["shapes_prompt_accuracy"] == 1.0  # no reranker: the first candidate, the true image
