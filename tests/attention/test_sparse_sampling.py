"""Sparse cached sampling in the generator goes through ``SparseKVCache`` and equals the oracle.

The oracle is the full teacher-forced pass with SDPA and the oracle masks (``backend="sdpa"``);
the cached decoder must reproduce its logits step by step, at a small grid and at the paper's
32x32 grid (1024 image tokens, kernel 11; tiny width so it runs in seconds), and each step must
read only the keys of the query's row / column / window — never a masked full prefix.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vilgkit.models import UnifiedTransformer
from vilgkit.testing.tiny import tiny_generator
from vilgkit_attention import SparseAttention
from vilgkit_attention.decode import SparseKVCache


def _model(grid: int, kernel: int, layers: int = 4, hidden: int = 16) -> UnifiedTransformer:
    # the GPT-2 init spread out so that every position's logits depend on its keys
    kwargs = dict(hidden_size=hidden, num_layers=layers, max_text_len=8, max_image_grid=grid)
    return tiny_generator(spread=0.15, attention=SparseAttention(kernel_size=kernel), **kwargs).eval()


def _oracle(model: UnifiedTransformer) -> UnifiedTransformer:
    """The same weights with SDPA over the oracle masks (dense cost, the definition)."""
    attn = model.attention
    oracle = SparseAttention(kernel_size=attn.kernel_size, schedule=attn.schedule, backend="sdpa")
    for block in model.layers:
        block.pattern = oracle
    return model


def _cached_logits(model: UnifiedTransformer, batch: dict) -> torch.Tensor:
    """Prefill the text, then feed the teacher-forced image slots one at a time through ``new_cache``."""
    x, pad, layout, _ = model._stream("txt2img", batch)
    S, B = layout.source_length, x.shape[0]
    pad = pad if pad is not None else torch.zeros(B, layout.length, dtype=torch.bool)
    cache = model.new_cache(B, layout)
    assert isinstance(cache, SparseKVCache)
    assert cache.kinds == [
        "row",
        "row",
        "column",
        "gather",
    ]  # the paper's schedule, 4 layers
    model._prefill(x[:, :S], pad[:, :S], cache, torch.arange(B))
    return torch.stack(
        [model.image_head(model._step(x[:, t], cache)) for t in range(S, layout.length)],
        1,
    )


@pytest.mark.parametrize("grid,kernel", [(4, 3), (32, 11)], ids=["4x4", "32x32"])
def test_sparse_cached_decoding_equals_oracle_forward(grid, kernel):
    model = _model(grid, kernel)
    batch = model.dummy_batch(2, 7, (grid, grid), generator=torch.Generator().manual_seed(3))
    assert not batch["text_mask"].all()  # padded prompts are exercised
    batch["directions"] = ["txt2img"]
    with torch.no_grad():
        got = _cached_logits(model, batch)
        want = _oracle(model)(batch).logits["txt2img"]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_sparse_sampling_reads_only_window_keys(monkeypatch):
    """At 32x32 every decoding step attends at most the source plus its row / column / 11x11 window."""
    model = _model(32, 11)
    ids = model.dummy_batch(1, 7, (1, 1), generator=torch.Generator().manual_seed(0))["text_ids"]
    S = ids.shape[1]
    seen: list[int] = []
    real = F.scaled_dot_product_attention

    def recording(q, k, v, **kw):
        if q.shape[-2] == 1:  # decoding steps (the prefill attends the whole source at once)
            seen.append(k.shape[-2])
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    codes = model.sample_images(ids, None, (32, 32), top_k=4, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (1, 32, 32)
    assert len(seen) == 32 * 32 * model.num_layers  # every image step of every layer went through the cache
    # row and column: the source + at most 32 line keys; conv (causal 11x11): source + 5 rows x 11 + 6
    assert max(seen) <= S + 5 * 11 + 6
    mean = sum(seen) / len(seen)
    assert mean < S + 40, mean  # a dense step would read S + 512 keys on average


def test_sparse_cache_is_smaller_than_dense_and_greedy_matches_oracle():
    model = _model(4, 3)
    batch = model.dummy_batch(2, 6, (4, 4), generator=torch.Generator().manual_seed(5))
    ids, mask = batch["text_ids"], batch["text_mask"]
    layout = model._stream("txt2img", batch)[2]
    sparse_cache = model.new_cache(4, layout)
    dense = tiny_generator(seed=None, hidden_size=16, num_layers=4, max_text_len=8)
    assert sparse_cache.nbytes() < dense.new_cache(4, layout).nbytes()  # row / column layers keep one line
    got = model.sample_images(ids, mask, (4, 4), top_k=1, num_candidates=2)
    oracle = _oracle(model)
    codes = torch.zeros(2, 16, dtype=torch.long)
    with torch.no_grad():  # greedy by full oracle passes, one code at a time
        for k in range(16):
            full = oracle(
                {
                    "text_ids": ids,
                    "text_mask": mask,
                    "codes": codes.view(2, 4, 4),
                    "directions": ["txt2img"],
                }
            )
            codes[:, k] = full.logits["txt2img"][:, k].argmax(-1)
    assert torch.equal(got, codes.view(2, 4, 4).repeat_interleave(2, 0))


def test_sparse_cache_equals_the_generic_gathering_cache_with_guidance(monkeypatch):
    """Candidates and classifier-free guidance (rows copied from unique prefills) through both caches."""
    model = _model(4, 3)
    batch = model.dummy_batch(2, 6, (4, 4), generator=torch.Generator().manual_seed(6))

    def run():
        return model.sample_images(
            batch["text_ids"],
            batch["text_mask"],
            (4, 4),
            num_candidates=3,
            cfg_scale=2.0,
            top_k=5,
            generator=torch.Generator().manual_seed(7),
        )

    fast = run()
    monkeypatch.setattr(SparseAttention, "decode_cache", lambda self, *a, **k: None)  # the generic KVCache
    assert not isinstance(model.new_cache(2, model._stream("txt2img", batch)[2]), SparseKVCache)
    assert torch.equal(run(), fast)
