"""Sampling and decoding: greedy equivalences, seeds, CFG, top-k/top-p, beam search."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.models.conftest import ReferenceSparsePattern, tiny_model
from vilgkit.models.sampling import filter_logits


def _prompts(model, batch_size=2, length=6, seed=0):
    b = model.dummy_batch(batch_size, length, (3, 3), vqa=True, generator=torch.Generator().manual_seed(seed))
    return b


@torch.no_grad()
def greedy_images_full(model, ids, mask, grid, cfg_scale=1.0):
    """Greedy decoding by recomputing the whole teacher-forced pass every step (no cache)."""
    B, (h, w) = ids.shape[0], grid
    codes = torch.zeros(B, h * w, dtype=torch.long)
    empty_ids, empty_mask = model.empty_prompt(B, ids.shape[1])
    for k in range(h * w):

        def logits(i, m, k=k):
            batch = {"text_ids": i, "text_mask": m, "codes": codes.view(B, h, w), "directions": ["txt2img"]}
            return model(batch).logits["txt2img"][:, k]

        out = logits(ids, mask)
        if cfg_scale != 1.0:
            un = logits(empty_ids, empty_mask)
            out = un + cfg_scale * (out - un)
        codes[:, k] = out.argmax(-1)
    return codes.view(B, h, w)


@torch.no_grad()
def greedy_text_full(model, codes, max_length, question=None):
    """Greedy captions/answers by full forward passes; returns (ids without BOS/EOS, per-step logits)."""
    B = codes.shape[0]
    seqs = torch.full((B, 1), model.bos_id)
    for _ in range(max_length):
        batch = {"codes": codes, "directions": ["vqa" if question else "img2txt"]}
        key = "answer" if question else "text"
        # append a dummy last id: slot t predicts id t+1, so the target needs one id beyond the prefix
        batch[f"{key}_ids"] = torch.cat([seqs, torch.full((B, 1), model.eos_id)], 1)
        batch[f"{key}_mask"] = torch.ones_like(batch[f"{key}_ids"], dtype=torch.bool)
        if question:
            batch["question_ids"], batch["question_mask"] = question
        logits = model(batch).logits[batch["directions"][0]][:, -1]
        logits[:, [model.pad_id, model.bos_id]] = float("-inf")
        seqs = torch.cat([seqs, logits.argmax(-1, keepdim=True)], 1)
    out = []
    for row in seqs[:, 1:].tolist():
        out.append(row[: row.index(model.eos_id)] if model.eos_id in row else row)
    return out


@pytest.mark.parametrize("sparse", [False, True])
def test_top_k_1_is_greedy_and_matches_no_cache(sparse):
    model = tiny_model(ReferenceSparsePattern() if sparse else None)
    b = _prompts(model)
    expected = greedy_images_full(model, b["text_ids"], b["text_mask"], (3, 3))
    got = model.sample_images(b["text_ids"], b["text_mask"], (3, 3), top_k=1, num_candidates=2)
    assert torch.equal(got, expected.repeat_interleave(2, 0))  # candidate-major per prompt
    assert torch.equal(model.sample_images(b["text_ids"], b["text_mask"], (3, 3), temperature=0.0), expected)


def test_cfg_matches_manual_guidance():
    model = tiny_model(text_dropout=0.1)
    b = _prompts(model)
    expected = greedy_images_full(model, b["text_ids"], b["text_mask"], (3, 3), cfg_scale=3.0)
    got = model.sample_images(b["text_ids"], b["text_mask"], (3, 3), top_k=1, cfg_scale=3.0)
    assert torch.equal(got, expected)
    assert not torch.equal(got, greedy_images_full(model, b["text_ids"], b["text_mask"], (3, 3)))


def test_seeds_reproducible_and_candidates_differ():
    model = tiny_model()
    b = _prompts(model)
    run = lambda seed, **kw: model.sample_images(  # noqa: E731
        b["text_ids"], b["text_mask"], (3, 3), num_candidates=4, generator=torch.Generator().manual_seed(seed), **kw
    )
    a = run(7, top_p=0.9, cfg_scale=2.0)
    assert a.shape == (8, 3, 3)
    assert torch.equal(a, run(7, top_p=0.9, cfg_scale=2.0))
    assert not torch.equal(a, run(8, top_p=0.9, cfg_scale=2.0))
    assert len({tuple(x.flatten().tolist()) for x in a}) > 1
    assert model.sample_images(b["text_ids"], None, (2, 2)).shape == (2, 2, 2)  # no mask: ids != pad
    one = run(7, top_k=3)
    logits = model(dict(b, directions=["txt2img"], codes=one[::4])).logits["txt2img"]
    allowed = logits.topk(3, -1).indices  # [B, T, 3] the only codes top_k=3 may draw
    assert (allowed == one[::4].flatten(1)[..., None]).any(-1).all()


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.79)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits[:, [3, 1, 0, 2]], top_p=0.79)) == [False, True, True, False]


@pytest.mark.parametrize("vqa", [False, True])
def test_greedy_text_and_single_beam(vqa):
    model = tiny_model()
    b = _prompts(model)
    q = (b["question_ids"], b["question_mask"]) if vqa else None
    kw = dict(question_ids=q[0], question_mask=q[1]) if vqa else {}
    greedy = model.generate_text(b["codes"], 6, method="greedy", **kw)
    assert greedy == greedy_text_full(model, b["codes"], 6, question=q)
    assert model.generate_text(b["codes"], 6, method="beam", num_beams=1, **kw) == greedy
    assert all(len(s) <= 6 and model.eos_id not in s and model.bos_id not in s for s in greedy)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    s1 = model.generate_text(b["codes"], 6, method="sample", generator=g(), **kw)
    assert s1 == model.generate_text(b["codes"], 6, method="sample", generator=g(), **kw)
    assert model.generate_text(b["codes"], 6, method="sample", top_k=1, **kw) == greedy


def test_wide_beam_is_exhaustive_search():
    """With as many beams as sequences, beam search returns the most likely sequence overall."""
    model = tiny_model(text_vocab_size=7)  # generable ids: {1, 3=EOS, 4, 5, 6}
    codes = _prompts(model, batch_size=1)["codes"]
    max_len, vocab = 3, [1, 3, 4, 5, 6]

    @torch.no_grad()
    def score(seq):  # log-prob with pad/BOS excluded, as decoding does
        ids = torch.tensor([[model.bos_id, *seq, model.eos_id]])
        batch = {
            "codes": codes,
            "text_ids": ids,
            "text_mask": torch.ones_like(ids, dtype=torch.bool),
            "directions": ["img2txt"],
        }
        logits = model(batch).logits["img2txt"][0]
        logits[:, [model.pad_id, model.bos_id]] = float("-inf")
        logp = logits.log_softmax(-1)
        return sum(float(logp[t, tok]) for t, tok in enumerate(seq))

    candidates = []
    for n in range(1, max_len + 1):
        for seq in itertools.product(vocab, repeat=n):
            if model.eos_id in seq[:-1]:
                continue
            candidates.append(seq)
    best = max(candidates, key=score)
    expected = list(best[:-1]) if best[-1] == model.eos_id else list(best)
    assert model.generate_text(codes, max_len, method="beam", num_beams=25) == [expected]


def test_text_log_likelihood_matches_forward():
    model = tiny_model()
    b = _prompts(model, batch_size=3)
    with torch.no_grad():
        logits = model(dict(b, directions=["img2txt"])).logits["img2txt"].log_softmax(-1)
    labels, real = b["text_ids"][:, 1:], b["text_mask"][:, 1:]
    expected = (logits.gather(-1, labels[..., None]).squeeze(-1) * real).sum(-1)
    got = model.text_log_likelihood(b["codes"], b["text_ids"], b["text_mask"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got.shape == (3,) and (got < 0).all()


def test_bad_sampling_arguments():
    model = tiny_model()
    b = _prompts(model)
    ids, mask = b["text_ids"], b["text_mask"]
    with pytest.raises(ValueError, match="grid"):
        model.sample_images(ids, mask, (0, 2))
    with pytest.raises(ValueError, match="max_image_grid"):
        model.sample_images(ids, mask, (5, 5))
    with pytest.raises(ValueError, match="top_p"):
        model.sample_images(ids, mask, (2, 2), top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        model.sample_images(ids, mask, (2, 2), top_k=0)
    with pytest.raises(ValueError, match="max_text_len"):
        model.sample_images(torch.ones(1, 11, dtype=torch.long), None, (2, 2))
    with pytest.raises(ValueError, match="method"):
        model.generate_text(b["codes"], 4, method="nucleus")
    with pytest.raises(ValueError, match="max_length"):
        model.generate_text(b["codes"], 11)
