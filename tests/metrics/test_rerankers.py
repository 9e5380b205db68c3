"""The rerankers of issue 26 pick the candidate their definition scores highest.

A stub generator whose likelihoods and captions are a table gives each reranker a case with a known
answer (the self-score, the contrastive score and the caption each pick a different candidate); the
tiny trained run checks the batched scores against one candidate at a time, and that more
candidates never lower the chosen score.
"""

from __future__ import annotations

import pytest
import torch

import vilgkit_rerank  # noqa: F401  (registers the rerankers)
from vilgkit.interfaces import Generator, GeneratorOutput, RerankInputs
from vilgkit.reranker_names import RERANKER_ALIASES, build_named_reranker, saved_name
from vilgkit_rerank import (
    CaptionReranker,
    ConsensusReranker,
    EnsembleReranker,
    MatcherReranker,
    MeanSelfReranker,
    PixelMatcherReranker,
    PMIReranker,
    SelfReranker,
)
from vilgkit_rerank.caption import ngram_f1

P0, P1 = (2, 10, 11, 3), (2, 12, 13, 3)  # BOS words EOS
SHUFFLED_P0 = (2, 11, 10, 3)
# log P(text | candidate code): prompt 0's candidates are codes 0-2, prompt 1's codes 3-5.
# Candidate 0 is likely under any text (generic), 1 explains only its prompt, 2 the other prompt.
TABLE = {
    (0, P0): -1.0, (0, P1): -0.5, (0, SHUFFLED_P0): -0.4,
    (1, P0): -2.0, (1, P1): -9.0, (1, SHUFFLED_P0): -8.0,
    (2, P0): -5.0, (2, P1): -1.0, (2, SHUFFLED_P0): -6.0,
    (3, P1): -3.0, (3, P0): -3.1,
    (4, P1): -1.0, (4, P0): -0.2,
    (5, P1): -2.0, (5, P0): -6.0,
    (2, (2, 10, 3)): -0.5, (5, (2, 12, 3)): -0.5,  # the partial captions of candidates 2 and 5
}  # fmt: skip
CAPTIONS = {0: [12, 13], 1: [10, 11], 2: [10], 3: [12, 13], 4: [10, 11], 5: [12]}


class TableGenerator(Generator):
    """Likelihoods and greedy captions looked up in ``TABLE`` / ``CAPTIONS`` by the candidate's code."""

    text_vocab_size, image_vocab_size, hidden_size, num_layers, max_text_len = 16, 8, 4, 1, 8

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, batch):
        return GeneratorOutput(losses={})

    def sample_images(self, text_ids, text_mask, grid, **sampling):
        raise NotImplementedError

    def generate_text(self, codes, max_length, **decoding):
        return [CAPTIONS[int(c)][:max_length] for c in codes.flatten(1)[:, 0]]

    def text_log_likelihood(self, codes, text_ids, text_mask=None):
        self.calls += 1
        rows = [tuple(ids[m].tolist()) for ids, m in zip(text_ids, text_mask)]
        return torch.tensor([TABLE.get((int(c), r), -20.0) for c, r in zip(codes.flatten(1)[:, 0], rows)])


def _inputs(prompts=(P0, P1), codes=(0, 1, 2, 3, 4, 5)):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([list(p) + [0] * (width - len(p)) for p in prompts])
    return RerankInputs(
        num_candidates=len(codes) // len(prompts),
        codes=torch.tensor(codes).view(-1, 1, 1),
        text_ids=ids,
        text_mask=ids != 0,
        generator=TableGenerator(),
    )


@pytest.mark.parametrize(
    ("reranker", "best", "expected"),
    [
        (SelfReranker(), [0, 1], [[-1.0, -2.0, -5.0], [-3.0, -1.0, -2.0]]),
        (SelfReranker(precision="bf16"), [0, 1], [[-1.0, -2.0, -5.0], [-3.0, -1.0, -2.0]]),
        (MeanSelfReranker(), [0, 1], [[-1 / 3, -2 / 3, -5 / 3], [-1.0, -1 / 3, -2 / 3]]),
        # own − the other prompt's likelihood under the same candidate
        (PMIReranker(), [1, 2], [[-0.5, 7.0, -4.0], [0.1, -0.8, 4.0]]),
        # captions: 0 names the other prompt, 1 the prompt exactly, 2 half of it (F1 of uni+bigrams 0.5)
        (CaptionReranker(), [1, 0], [[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]]),
        # mean log P(prompt) − mean log P(own caption): 0 when the prompt is the model's own caption
        (
            CaptionReranker(mode="agreement"),
            [1, 0],
            [[-1 / 3 + 0.5 / 3, 0.0, -5 / 3 + 0.25], [0.0, -1 / 3 + 0.2 / 3, -2 / 3 + 0.25]],
        ),
    ],
    ids=["self", "self_bf16", "self_mean", "pmi", "caption", "caption_agreement"],
)  # fmt: skip
def test_each_reranker_picks_its_known_answer(reranker, best, expected):
    result = reranker.rerank(_inputs())
    assert result.best.tolist() == best
    torch.testing.assert_close(result.scores, torch.tensor(expected), atol=1e-4, rtol=0)


class TableMatcher(torch.nn.Module):
    """A matcher whose score of (prompt, candidate code) is ``MATCH[(code, prompt)]``."""

    MATCH = {(0, P0): 0.1, (1, P0): 2.0, (2, P0): -1.0, (3, P1): 0.5, (4, P1): -3.0, (5, P1): 0.7}

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to run on
        self.calls: list[int] = []

    def forward(self, ids, mask, codes):
        self.calls.append(len(codes))
        rows = [tuple(int(t) for t in row[m]) for row, m in zip(ids, mask)]
        return torch.tensor([self.MATCH[(int(c.flatten()[0]), row)] for c, row in zip(codes, rows)])


def test_the_matcher_reranker_picks_the_matchers_best_in_passes_of_batch_size():
    matcher = TableMatcher()
    inputs = _inputs()
    inputs.matcher = matcher
    result = MatcherReranker(batch_size=4).rerank(inputs)
    assert result.best.tolist() == [1, 2]
    torch.testing.assert_close(result.scores, torch.tensor([[0.1, 2.0, -1.0], [0.5, -3.0, 0.7]]))
    assert matcher.calls == [4, 2]  # six pairs in passes of at most four
    with pytest.raises(ValueError, match="TrainMatcher"):
        MatcherReranker().rerank(_inputs())  # no matcher handed over


def test_the_pixel_matcher_reranker_scores_the_decoded_images():
    """The same table, keyed by the candidate's pixels (its code painted into the image)."""

    class PixelTable(TableMatcher):
        image_input = "pixels"

        def forward(self, ids, mask, images):
            return super().forward(ids, mask, images[:, 0, :1, :1].long())

    inputs = _inputs()
    inputs.images = inputs.codes.float()[:, None, :1, :1].expand(-1, 3, 4, 4).clone()
    inputs.matcher = PixelTable()
    result = PixelMatcherReranker(batch_size=4).rerank(inputs)
    assert result.best.tolist() == [1, 2]
    with pytest.raises(ValueError, match="decoded candidate images"):
        PixelMatcherReranker().rerank(_inputs())
    with pytest.raises(ValueError, match="rerank with 'pixel_matcher'"):
        MatcherReranker().rerank(inputs)
    inputs.matcher = TableMatcher()
    with pytest.raises(ValueError, match="rerank with 'matcher'"):
        PixelMatcherReranker().rerank(inputs)


def test_the_consensus_reranker_keeps_the_candidate_closest_to_the_others():
    """Flat images (one value each): prompt 0's are 0, 0.1 and 1 → mean distances to the other two
    0.55, 0.5, 0.95 (the middle one wins); prompt 1's are 0.6, −1, 0.5 → 0.85, 1.55, 0.8."""
    values = torch.tensor([0.0, 0.1, 1.0, 0.6, -1.0, 0.5])
    inputs = _inputs()
    inputs.images = values[:, None, None, None].expand(-1, 3, 8, 8).clone()
    result = ConsensusReranker().rerank(inputs)
    assert result.best.tolist() == [1, 2]
    torch.testing.assert_close(result.scores, -torch.tensor([[0.55, 0.5, 0.95], [0.85, 1.55, 0.8]]))
    single = RerankInputs(num_candidates=1, codes=torch.zeros(2, 1, 1, dtype=torch.long), images=inputs.images[:2])
    assert ConsensusReranker().rerank(single).scores.tolist() == [[0.0], [0.0]]
    with pytest.raises(ValueError, match="decoded candidate images"):
        ConsensusReranker().rerank(_inputs())
    with pytest.raises(ValueError, match="pool"):
        ConsensusReranker(pool=0)


@pytest.mark.parametrize("pool", [1, 2, 3])
def test_consensus_scores_are_mean_l1_distances_of_the_pooled_images(pool):
    """The batched score against its definition, one pair at a time (pool 3 pads 8 px with a partial window)."""
    torch.manual_seed(0)
    n, images = 4, torch.rand(2 * 4, 3, 8, 8) * 2 - 1
    inputs = RerankInputs(num_candidates=n, codes=torch.zeros(8, 1, 1, dtype=torch.long), images=images)
    pooled = torch.nn.functional.avg_pool2d(images, pool, ceil_mode=True).flatten(1)

    def others(r):  # the other candidates of row r's prompt
        return [o for o in range(r - r % n, r - r % n + n) if o != r]

    expected = torch.tensor(
        [-sum(float((pooled[r] - pooled[o]).abs().mean()) for o in others(r)) / (n - 1) for r in range(8)]
    ).view(2, n)
    torch.testing.assert_close(ConsensusReranker(pool=pool).rerank(inputs).scores, expected, atol=1e-6, rtol=0)


def test_an_ensemble_sums_its_members_per_prompt_z_scores():
    """``self`` picks candidates 0 and 1, the matcher 1 and 2; the standardised sum decides.

    self z-scores: prompt 0 [-1, -2, -5] → [0.981, 0.392, -1.373], prompt 1 [-3, -1, -2] → [-1.225,
    1.225, 0]; matcher: [0.1, 2, -1] → [-0.215, 1.318, -1.103], [0.5, -3, 0.7] → [0.647, -1.412, 0.765]."""
    inputs = _inputs()
    inputs.matcher = TableMatcher()
    ensemble = build_named_reranker("self+matcher")
    assert isinstance(ensemble, EnsembleReranker) and ensemble.members == ["self", "matcher"]
    assert ensemble.needs_generator and ensemble.needs_matcher and not ensemble.needs_images
    assert ensemble.reads == "codes" and saved_name(ensemble) == "self+matcher"
    result = ensemble.rerank(inputs)
    assert result.best.tolist() == [1, 2]
    torch.testing.assert_close(
        result.scores, torch.tensor([[0.765, 1.710, -2.476], [-0.577, -0.188, 0.765]]), atol=1e-3, rtol=0
    )
    weighted = EnsembleReranker(["self", "matcher"], weights=[2.0, 1.0]).rerank(inputs)
    assert weighted.best.tolist() == [1, 1]  # [1.746, 2.103, -3.849], [-1.802, 1.037, 0.765]
    # a member whose scores tie on a prompt adds nothing there: on identical candidates only the other decides
    tied = _inputs(prompts=(P0,), codes=(0, 0, 0))
    tied.matcher = TableMatcher()
    assert build_named_reranker("self+matcher").rerank(tied).scores.abs().max() == 0


def test_bad_ensembles_are_refused_with_the_reason():
    from vilgkit.errors import VilgkitError

    with pytest.raises(VilgkitError, match="other than none"):
        build_named_reranker("self+none")
    with pytest.raises(VilgkitError, match="unknown reranker 'nope'"):
        build_named_reranker("self+nope")
    with pytest.raises(ValueError, match="a run has one"):
        build_named_reranker("matcher+pixel_matcher")
    with pytest.raises(ValueError, match="at least two members"):
        EnsembleReranker(["self"])
    with pytest.raises(ValueError, match="2 members need 2 weights"):
        EnsembleReranker(["self", "pmi"], weights=[1.0])


def test_pmi_is_batched_and_falls_back_to_the_shuffled_prompt_alone():
    inputs = _inputs()
    PMIReranker(batch_size=64).rerank(inputs)
    assert inputs.generator.calls == 2  # own likelihoods, then every (candidate, distractor) pair: one pass each
    # one prompt: no other prompt in the call, so its own words in another order are the distractor
    single = PMIReranker().rerank(_inputs(prompts=(P0,), codes=(0, 1, 2)))
    torch.testing.assert_close(single.scores, torch.tensor([[-0.6, 6.0, 1.0]]))
    assert single.best.tolist() == [1]
    shuffled = PMIReranker(baseline="shuffled").rerank(_inputs())
    torch.testing.assert_close(shuffled.scores[0], torch.tensor([-0.6, 6.0, 1.0]))
    # identical prompts are no distractors of each other; a one-word prompt has nothing to shuffle
    same = PMIReranker().rerank(_inputs(prompts=(P0, P0), codes=(0, 1, 2, 0, 1, 2)))
    torch.testing.assert_close(same.scores, torch.tensor([[-0.6, 6.0, 1.0]] * 2))
    one_word = PMIReranker().rerank(_inputs(prompts=((2, 10, 3),), codes=(0, 1)))
    assert one_word.scores.tolist() == [[-20.0, -20.0]]  # the plain likelihood (not in the table)


def test_caption_overlap_ties_are_broken_by_the_prompt_likelihood():
    # candidates 1 and 4 of prompt 0 both caption it exactly: the likelier prompt (4: -0.2) wins
    result = CaptionReranker().rerank(_inputs(prompts=(P0,), codes=(1, 4, 0)))
    assert result.best.tolist() == [1]
    assert 0 < float(result.scores[0, 1] - result.scores[0, 0]) < 1e-5
    assert ngram_f1([10, 11], [11, 10]) == pytest.approx(2 / 3)  # same words, other order: the bigram differs
    assert ngram_f1([], []) == 1.0 and ngram_f1([1], []) == 0.0


def test_every_short_name_builds_its_reranker_and_bad_arguments_fail():
    from vilgkit.errors import VilgkitError

    for name, alias in RERANKER_ALIASES.items():
        if alias is None or alias[0] == "ClipReranker":
            continue
        built = build_named_reranker(name)
        assert type(built).__name__ == alias[0] and all(getattr(built, k) == v for k, v in alias[1].items())
        assert type(build_named_reranker(name.upper())).__name__ == alias[0]  # any case
        # the name a run saves rebuilds the same reranker
        again = build_named_reranker(saved_name(built))
        assert type(again) is type(built) and vars(again) == vars(built)
    assert build_named_reranker("none") is None and saved_name(None) == "none"
    assert saved_name(SelfReranker()) == "SelfReranker"  # the class name where the defaults rebuild it
    assert saved_name(PMIReranker(baseline="shuffled")) == "pmi_shuffled"
    assert saved_name(PMIReranker(num_distractors=5)) == "PMIReranker"  # no name keeps K = 5
    assert type(build_named_reranker("PMIReranker")).__name__ == "PMIReranker"
    with pytest.raises(VilgkitError, match="unknown reranker 'nope'; use one of none, self, self_bf16, self_mean, pmi"):
        build_named_reranker("nope")
    with pytest.raises(ValueError, match="baseline"):
        PMIReranker(baseline="empty")
    with pytest.raises(ValueError, match="mode"):
        CaptionReranker(mode="bleu")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        SelfReranker(precision="fp16")
    with pytest.raises(ValueError, match="needs the generator"):
        PMIReranker().rerank(RerankInputs(num_candidates=1, codes=torch.zeros(1, 1, 1, dtype=torch.long)))


# ---------------------------------------------------------------- through a tiny trained model

RERANKERS = {
    "self": SelfReranker(batch_size=5),
    "self_mean": MeanSelfReranker(batch_size=5),
    "pmi": PMIReranker(batch_size=5),
    "caption": CaptionReranker(batch_size=5),
    "caption_agreement": CaptionReranker(mode="agreement", batch_size=5),
}


@pytest.fixture(scope="module")
def sampled(tiny_run):
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(tiny_run, device="cpu")
    prompts = ["a red circle", "a small blue square at the top", "a green triangle"]
    codes, ids, mask = pipe.sample_codes(prompts, 4, seed=1, temperature=1.0)
    return pipe.generator, codes, ids, mask


def _alone(model, code, ids):
    """log P(ids | one candidate), the prompt unpadded."""
    return float(model.text_log_likelihood(code[None], ids[None], None)[0])


def _expected(name, model, codes, ids, mask, n):
    """Each reranker's definition, one candidate at a time."""
    real = [row[m] for row, m in zip(ids, mask)]
    out = torch.empty(len(real), n)
    for r in range(codes.shape[0]):
        b = r // n
        own = _alone(model, codes[r], real[b])
        targets = len(real[b]) - 1
        if name == "self":
            out[b, r % n] = own
        elif name == "self_mean":
            out[b, r % n] = own / targets
        elif name == "pmi":  # the other prompts of the call (3 prompts: both others)
            others = torch.tensor([_alone(model, codes[r], real[j]) for j in range(len(real)) if j != b])
            out[b, r % n] = own - (torch.logsumexp(others, 0) - torch.log(torch.tensor(float(len(others)))))
        else:
            caption = model.generate_text(codes[r][None], max_length=model.max_text_len - 2)[0]
            if name == "caption":
                out[b, r % n] = ngram_f1(caption, real[b][1:-1].tolist()) + 1e-5 * torch.tensor(own / targets).exp()
            else:
                cap = torch.tensor([int(real[b][0]), *caption, int(real[b][-1])])
                out[b, r % n] = own / targets - _alone(model, codes[r], cap) / (len(cap) - 1)
    return out


@pytest.mark.parametrize("name", list(RERANKERS))
def test_batched_scores_equal_one_candidate_at_a_time_on_a_trained_model(sampled, name):
    model, codes, ids, mask = sampled
    result = RERANKERS[name].rerank(
        RerankInputs(num_candidates=4, codes=codes, text_ids=ids, text_mask=mask, generator=model)
    )
    expected = _expected(name, model, codes, ids, mask, 4)
    torch.testing.assert_close(result.scores, expected, atol=2e-4, rtol=0)
    assert torch.equal(result.scores.gather(1, result.best[:, None])[:, 0], result.scores.max(1).values)


def test_bf16_self_scores_are_the_fp32_definition_within_bf16_rounding(sampled):
    """``self_bf16`` scores the same likelihoods under bf16 autocast: close to fp32, not equal to it."""
    model, codes, ids, mask = sampled
    inputs = RerankInputs(num_candidates=4, codes=codes, text_ids=ids, text_mask=mask, generator=model)
    fp32 = RERANKERS["self"].rerank(inputs).scores
    bf16 = build_named_reranker("self_bf16", batch_size=5).rerank(inputs)
    torch.testing.assert_close(
        bf16.scores, _expected("self", model, codes, ids, mask, 4), atol=0.05 * float(fp32.abs().max()), rtol=0
    )
    assert not torch.equal(bf16.scores, fp32)  # the passes really ran in bf16
    assert torch.equal(bf16.scores.gather(1, bf16.best[:, None])[:, 0], bf16.scores.max(1).values)


@pytest.mark.parametrize("name", list(RERANKERS))
def test_more_candidates_never_lower_the_chosen_score(sampled, name):
    model, codes, ids, mask = sampled
    chosen = []
    for n in (1, 2, 4):  # the first n of each prompt's 4 candidates
        subset = codes.view(3, 4, *codes.shape[1:])[:, :n].reshape(-1, *codes.shape[1:])
        result = RERANKERS[name].rerank(
            RerankInputs(num_candidates=n, codes=subset, text_ids=ids, text_mask=mask, generator=model)
        )
        chosen.append(result.scores.max(1).values)
    assert bool((chosen[1] >= chosen[0] - 1e-5).all()) and bool((chosen[2] >= chosen[1] - 1e-5).all())
