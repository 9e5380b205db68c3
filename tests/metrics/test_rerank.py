"""Rerankers: self-reranking picks the highest-likelihood candidate, in batched passes."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import vilgkit_rerank  # noqa: F401  (registers the rerankers)
from vilgkit.interfaces import Generator, GeneratorOutput, RerankInputs
from vilgkit_rerank import ClipReranker, NoReranker, SelfReranker


class _ScoringGenerator(Generator):
    """A stand-in generator whose log-likelihood is a known function of codes and text; records calls."""

    text_vocab_size, image_vocab_size, hidden_size, num_layers = 16, 8, 4, 1

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def forward(self, batch):
        return GeneratorOutput(losses={})

    def sample_images(self, text_ids, text_mask, grid, **sampling):
        raise NotImplementedError

    def generate_text(self, codes, max_length, **decoding):
        raise NotImplementedError

    def text_log_likelihood(self, codes, text_ids, text_mask=None):
        self.calls.append((codes.shape[0], text_ids.clone(), text_mask.clone()))
        # Depends on both inputs, so a wrong prompt/candidate pairing changes the ranking.
        match = (codes.flatten(1).float() == text_ids[:, 1:2].float()).float().sum(1)
        return match - 0.01 * codes.flatten(1).float().sum(1)


def _inputs(num_prompts=3, n=5, seed=0, generator=None):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 4, (num_prompts * n, 2, 2), generator=g)
    text_ids = torch.tensor([[2, p % 4, 3, 0] for p in range(num_prompts)])
    text_mask = text_ids != 0
    text_mask[:, 0] = True
    return RerankInputs(num_candidates=n, codes=codes, text_ids=text_ids, text_mask=text_mask, generator=generator)


def test_self_rerank_picks_highest_likelihood_and_is_batched():
    gen = _ScoringGenerator()
    inputs = _inputs(num_prompts=3, n=5, generator=gen)
    result = SelfReranker(batch_size=4).rerank(inputs)
    # Batched: 15 candidates in passes of ≤ 4 rows (4, 4, 4, 3), not one call per candidate.
    assert [c[0] for c in gen.calls] == [4, 4, 4, 3]
    # The prompt of candidate row r is prompt r // N (candidate-major).
    ids = torch.cat([c[1] for c in gen.calls])
    assert torch.equal(ids, inputs.text_ids.repeat_interleave(5, dim=0))
    expected = _ScoringGenerator().text_log_likelihood(inputs.codes, ids, ids != 0).reshape(3, 5)
    assert torch.allclose(result.scores, expected)
    assert torch.equal(result.best, expected.argmax(1))
    assert torch.equal(
        result.select(inputs.codes), inputs.codes.reshape(3, 5, 2, 2)[torch.arange(3), expected.argmax(1)]
    )
    assert result.seconds >= 0
    # The choice does not depend on the pass size.
    assert torch.equal(SelfReranker(batch_size=64).rerank(inputs).best, result.best)


def test_self_rerank_with_a_tiny_unified_transformer():
    from vilgkit.models import UnifiedTransformer

    torch.manual_seed(0)
    model = UnifiedTransformer(**UnifiedTransformer.conformance_args()).eval()
    text_ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    text_mask = text_ids != 0
    codes = model.sample_images(
        text_ids, text_mask, grid=(2, 2), num_candidates=4, generator=torch.Generator().manual_seed(1)
    )
    assert codes.shape == (8, 2, 2)
    inputs = RerankInputs(num_candidates=4, codes=codes, text_ids=text_ids, text_mask=text_mask, generator=model)
    result = SelfReranker(batch_size=3).rerank(inputs)
    one_by_one = torch.stack(
        [
            model.text_log_likelihood(codes[r : r + 1], text_ids[r // 4 : r // 4 + 1], text_mask[r // 4 : r // 4 + 1])[
                0
            ]
            for r in range(8)
        ]
    ).reshape(2, 4)
    assert torch.allclose(result.scores, one_by_one, atol=1e-4)
    assert torch.equal(result.best, one_by_one.argmax(1))
    normalized = SelfReranker(length_normalize=True).rerank(inputs)
    assert torch.equal(normalized.best, result.best)  # same prompt length within a group
    assert torch.allclose(normalized.scores[1], result.scores[1] / 2, atol=1e-4)  # 2 targets: 5, EOS


def test_no_reranker_keeps_first_candidate():
    result = NoReranker().rerank(_inputs(num_prompts=2, n=3))
    assert result.best.tolist() == [0, 0]
    assert result.order.tolist() == [[0, 1, 2], [0, 1, 2]]


def test_rerank_input_errors():
    with pytest.raises(ValueError, match="groups of 4"):
        NoReranker().rerank(RerankInputs(num_candidates=4, codes=torch.zeros(6, 2, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match="needs the generator"):
        SelfReranker().rerank(_inputs())
    with pytest.raises(ValueError, match="needs decoded candidate images"):
        ClipReranker(weights_path="x").rerank(_inputs())
    with pytest.raises(ValueError, match="batch_size"):
        SelfReranker(batch_size=0)


def test_clip_reranker_missing_weights_is_clear(tmp_path):
    inputs = _inputs(num_prompts=1, n=2)
    inputs.images, inputs.prompts = torch.zeros(2, 3, 8, 8), ["a red circle"]
    with pytest.raises(ValueError, match="weights_path"):
        ClipReranker().rerank(inputs)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.safetensors")):
        ClipReranker(weights_path=str(tmp_path / "nope.safetensors")).rerank(inputs)


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="optional extra 'clip' not installed")
def test_clip_reranker_scores_with_local_weights(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    config = tmp_path / "vilgkit-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("vilgkit-tiny-clip", pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    reranker = ClipReranker(
        weights_path=str(tmp_path / "clip.safetensors"),
        model_name="vilgkit-tiny-clip",
        model_config=str(config),
        batch_size=3,
    )
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 40, 48, generator=g) * 2 - 1
    inputs = RerankInputs(
        num_candidates=2,
        codes=torch.zeros(4, 1, 1, dtype=torch.long),
        images=images,
        prompts=["a red circle", "a blue square"],
    )
    result = reranker.rerank(inputs)
    # Independent computation: open_clip's own encoders on the same preprocessed pixels.
    with torch.no_grad():
        text = torch.nn.functional.normalize(
            model.encode_text(open_clip.get_tokenizer("vilgkit-tiny-clip")(inputs.prompts)), dim=-1
        )
        img = torch.nn.functional.normalize(model.encode_image(reranker._preprocess(images)), dim=-1)
    expected = (img * text.repeat_interleave(2, 0)).sum(-1).reshape(2, 2)
    assert torch.allclose(result.scores, expected, atol=1e-5)
    assert reranker._preprocess(images).shape == (4, 3, 32, 32)


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_batched_self_rerank_scores_equal_one_candidate_at_a_time(batch_size):
    """The Pipeline's and SelfReranker's batched scores = each candidate scored alone with its unpadded prompt."""
    from vilgkit.models import UnifiedTransformer
    from vilgkit.self_rerank import self_rerank_scores

    torch.manual_seed(0)
    model = UnifiedTransformer(**UnifiedTransformer.conformance_args()).eval()
    text_ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0], [2, 6, 8, 3, 0]])
    text_mask = text_ids != 0
    codes = model.sample_images(
        text_ids, text_mask, grid=(3, 3), num_candidates=4, generator=torch.Generator().manual_seed(2)
    )
    batched = self_rerank_scores(model, codes, text_ids, text_mask, 4, batch_size=batch_size)
    alone = torch.empty(3, 4)
    for r in range(12):
        b = r // 4
        real = text_ids[b : b + 1, : int(text_mask[b].sum())]  # no padding at all
        alone[b, r % 4] = model.text_log_likelihood(codes[r : r + 1], real, None)[0]
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0)
    plugin = SelfReranker(batch_size=batch_size).score(
        RerankInputs(num_candidates=4, codes=codes, text_ids=text_ids, text_mask=text_mask, generator=model)
    )
    assert torch.equal(plugin.view(3, 4), batched)  # one implementation behind both paths
