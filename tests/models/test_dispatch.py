"""Per-machine dispatch: forced, cached and probed decisions; every branch gives the same numbers."""

from __future__ import annotations

import json

import pytest
import torch

from vilgkit import dispatch
from vilgkit.models import UnifiedTransformer
from vilgkit.testing.tiny import tiny_generator


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty per-machine cache file, no environment override, no decisions made in this process."""
    monkeypatch.setenv(dispatch.CACHE_ENV, str(tmp_path / "dispatch.json"))
    monkeypatch.delenv(dispatch.ENV, raising=False)
    dispatch.reset()
    yield tmp_path / "dispatch.json"
    dispatch.reset()


def test_probe_once_then_read_from_the_machine_cache(fresh, monkeypatch):
    calls = []

    def probe():
        calls.append(1)
        return {"split": 2.0, "linear": 1.0}  # the non-default branch, clearly faster

    monkeypatch.setitem(dispatch._probes, "gemv_few", probe)
    assert dispatch.choose("gemv_few") == "linear"  # the faster branch
    assert dispatch.choose("gemv_few") == "linear" and len(calls) == 1  # decided once per process
    stored = json.loads(fresh.read_text())
    assert stored[dispatch.machine_key()]["gemv_few"] == {
        "branch": "linear",
        "seconds": {"split": 2.0, "linear": 1.0},
    }
    dispatch.reset()  # a new process: the file answers, no probe
    monkeypatch.setitem(dispatch._probes, "gemv_few", lambda: pytest.fail("probed again"))
    assert dispatch.choose("gemv_few") == "linear"
    # another thread count is another machine entry: probed on its own
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        monkeypatch.setitem(dispatch._probes, "gemv_few", lambda: {"split": 1.0, "linear": 0.95})
        assert dispatch.choose("gemv_few") == "split"  # within the margin: the default stays
    finally:
        torch.set_num_threads(before)
    assert len(json.loads(fresh.read_text())) == 2


def test_environment_forces_and_defaults_never_probe(fresh, monkeypatch):
    for name in dispatch.DECISIONS:
        monkeypatch.setitem(dispatch._probes, name, lambda: pytest.fail("must not probe"))
    monkeypatch.setenv(dispatch.ENV, "defaults")
    assert dispatch.prepare() == {name: branches[0] for name, branches in dispatch.DECISIONS.items()}
    dispatch.reset()
    monkeypatch.setenv(dispatch.ENV, "gemv_few=linear, attention_bf16=sdpa")
    assert dispatch.choose("gemv_few") == "linear" and dispatch.choose("attention_bf16") == "sdpa"
    with dispatch.forced(gemv_few="split"):  # code beats the environment inside the block
        assert dispatch.choose("gemv_few") == "split"
    assert dispatch.choose("gemv_few") == "linear"
    assert not fresh.exists()  # nothing measured, nothing stored


@pytest.mark.parametrize("value", ["gemv_few=fast", "bogus=split", "gemv_few"])
def test_bad_environment_names_what_is_allowed(fresh, monkeypatch, value):
    monkeypatch.setenv(dispatch.ENV, value)
    with pytest.raises(dispatch.DispatchError, match="expected"):
        dispatch.choose("gemv_few")


def test_real_probes_pick_a_branch_for_every_decision(fresh):
    decided = dispatch.prepare()
    assert set(decided) == set(dispatch.DECISIONS)
    stored = json.loads(fresh.read_text())[dispatch.machine_key()]
    for name, branch in decided.items():
        assert branch in dispatch.DECISIONS[name]
        assert set(stored[name]["seconds"]) == set(dispatch.DECISIONS[name])  # every branch was timed


def _tiny_model() -> UnifiedTransformer:
    return tiny_generator(max_text_len=8)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_attention_branches_give_the_same_loss_and_gradients(bf16):
    model = _tiny_model()
    batch = model.dummy_batch(3, 6, (3, 3), vqa=True, generator=torch.Generator().manual_seed(1))
    name = "attention_bf16" if bf16 else "attention_fp32"
    results = {}
    for branch in dispatch.DECISIONS[name]:
        model.zero_grad(set_to_none=True)
        with (
            dispatch.forced(**{name: branch}),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
        ):
            loss = model(batch).losses["loss"]
        loss.backward()
        results[branch] = (
            loss.detach(),
            torch.cat([p.grad.flatten() for p in model.parameters()]),
        )
    (l1, g1), (l2, g2) = results.values()
    tol = 2e-2 if bf16 else 1e-5
    torch.testing.assert_close(l1, l2, atol=tol, rtol=tol)
    assert (g1 - g2).norm() <= tol * g2.norm()


def test_gemv_branches_give_the_same_decoding_logits():
    model = _tiny_model().eval()
    with torch.no_grad():
        for layer in model.modules():  # weights above the split threshold (the real layers' size)
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, 0.1)
    from vilgkit.models import gemv

    ids = model.dummy_batch(2, 6, (1, 1), generator=torch.Generator().manual_seed(2))["text_ids"]
    outs = []
    old = gemv.MIN_WEIGHT_NUMEL
    gemv.MIN_WEIGHT_NUMEL = 1
    try:
        for branch in ("split", "linear"):
            with dispatch.forced(gemv_few=branch, gemv_many=branch):
                outs.append(model.sample_images(ids, None, (3, 3), top_k=1, num_candidates=4))
    finally:
        gemv.MIN_WEIGHT_NUMEL = old
    assert torch.equal(outs[0], outs[1])


def test_encode_layout_branches_give_the_same_codes():
    pytest.importorskip("vilgkit_vq")
    from vilgkit_vq.vqvae import VQVAETokenizer

    torch.manual_seed(0)
    tok = VQVAETokenizer(codebook_size=64, code_dim=8, downsample=4, hidden=8).eval()
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = {}
        for branch in dispatch.DECISIONS["encode_layout"]:
            with dispatch.forced(encode_layout=branch):
                codes[branch] = tok.encode(images)
    a, b = codes.values()
    assert (a == b).float().mean() >= 0.99  # floating-point ties may pick a neighbouring code
