"""Conformance tests, parametrized over every registered component (import them into a test file).

Each test receives ``vilgkit_component`` (a :class:`ComponentCase`) from the pytest plugin and runs
the checks that apply to its interface. They test behaviour every implementation must have, so a
third-party plugin passing them can be named in a recipe and trained by the engine.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from vilgkit.errors import RecipeError
from vilgkit.interfaces import AttentionPattern, ImageTokenizer, ParallelStrategy, TextTokenizer
from vilgkit.layout import Layout
from vilgkit.testing.components import build_component

__all__ = [
    "test_component_builds",
    "test_unknown_argument_rejected",
    "test_module_state_dict_round_trip",
    "test_image_tokenizer_contract",
    "test_text_tokenizer_contract",
    "test_attention_pattern_contract",
    "test_parallel_strategy_contract",
]


def _case(vilgkit_component, kind: type | None = None):
    if vilgkit_component is None:
        pytest.skip("no component registered")
    if kind is not None and not (inspect.isclass(vilgkit_component.cls) and issubclass(vilgkit_component.cls, kind)):
        pytest.skip(f"{vilgkit_component.name} is not a {kind.__name__}")
    return vilgkit_component


def _build_or_skip(cls: type):
    # Strategies that need hardware this machine lacks refuse at construction by design.
    try:
        return build_component(cls)
    except RuntimeError as err:
        if "CUDA" in str(err) or "cuda" in str(err):
            pytest.skip(f"{cls.__name__} needs CUDA: {err}")
        raise


def test_component_builds(vilgkit_component):
    """The class builds from defaults or ``conformance_args`` and is what its registry expects."""
    case = _case(vilgkit_component)
    obj = _build_or_skip(case.cls)
    assert isinstance(obj, case.cls)


def test_unknown_argument_rejected(vilgkit_component):
    """A recipe passing an argument the constructor does not take fails naming the dotted key."""
    from vilgkit.recipe import resolve_class_paths

    case = _case(vilgkit_component)
    params = inspect.signature(case.cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        pytest.skip("accepts **kwargs")
    node = {
        "thing": {"class_path": f"{case.cls.__module__}.{case.cls.__qualname__}", "init_args": {"no_such_arg_xyz": 1}}
    }
    with pytest.raises(RecipeError, match=r"thing\.init_args\.no_such_arg_xyz"):
        resolve_class_paths(node, "conformance.yaml")
    with pytest.raises(TypeError):
        case.cls(no_such_arg_xyz=1)


@pytest.mark.vilgkit_kind.with_args(nn.Module)
def test_module_state_dict_round_trip(vilgkit_component):
    """An ``nn.Module`` component restores exactly from its own state dict."""
    case = _case(vilgkit_component, nn.Module)
    torch.manual_seed(0)
    a = _build_or_skip(case.cls)
    torch.manual_seed(1)
    b = _build_or_skip(case.cls)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.vilgkit_kind.with_args(ImageTokenizer)
def test_image_tokenizer_contract(vilgkit_component):
    """encode/decode/embed shapes, code range, output range, and a finite differentiable loss."""
    case = _case(vilgkit_component, ImageTokenizer)
    torch.manual_seed(0)
    tok = _build_or_skip(case.cls)
    side = 2 * tok.downsample
    images = torch.rand(2, 3, side, side) * 2 - 1
    tok.eval()
    with torch.no_grad():
        codes = tok.encode(images)
        assert codes.shape == (2, 2, 2) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
        z = tok.embed(codes)
        assert z.shape == (2, tok.code_dim, 2, 2)
        out = tok.decode(codes)
        assert out.shape == images.shape
        assert float(out.min()) >= -1.0 - 1e-5 and float(out.max()) <= 1.0 + 1e-5
        assert torch.allclose(tok.decode_embedding(z), out, atol=1e-5)
    with pytest.raises(ValueError):
        tok.grid_size(side + 1, side)
    tok.train()
    losses = tok.loss(images)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.parameters())


@pytest.mark.vilgkit_kind.with_args(TextTokenizer)
def test_text_tokenizer_contract(vilgkit_component, tmp_path):
    """Fit (if needed), encode/decode round trip on plain words, identical after save/load."""
    case = _case(vilgkit_component, TextTokenizer)
    tok = _build_or_skip(case.cls)
    corpus = ["a red circle at the top left", "a small blue square in the centre", "左上角有一个大的红色圆形"] * 4
    if not tok.is_fitted:
        tok.fit(corpus)
    ids = tok.encode(corpus[:3])
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for row in ids for i in row)
    assert tok.decode(ids)[0].replace(" ", "") == corpus[0].replace(" ", "")
    specials = {tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id, tok.unk_id}
    assert len(specials) >= 4, "pad/bos/eos/sep/unk must be (mostly) distinct ids"
    tok.save(tmp_path)
    other = _build_or_skip(case.cls)
    other.load(tmp_path)
    assert other.encode(corpus) == tok.encode(corpus)
    assert other.vocab_size == tok.vocab_size


LAYOUTS = [Layout.text_to_image(3, 3, 4), Layout.image_to_text(3, 4, 3), Layout.vqa(2, 3, 2, 2)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["t2i", "i2t", "vqa"])
@pytest.mark.vilgkit_kind.with_args(AttentionPattern)
def test_attention_pattern_contract(vilgkit_component, layout):
    """Oracle shape and basic rules; ``attend`` and ``decode_keys`` agree with the oracle."""
    case = _case(vilgkit_component, AttentionPattern)
    pattern = _build_or_skip(case.cls)
    num_layers = 4
    n = layout.length
    src = layout.source_length
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 8) for _ in range(3))
    for layer in range(num_layers):
        allowed = pattern.allowed(layer, num_layers, layout)
        assert allowed.shape == (n, n) and allowed.dtype == torch.bool
        assert bool(allowed.diagonal().all()), "every position attends itself"
        assert not bool(allowed[:src, src:].any()), "source never sees the target"
        assert bool(allowed[src:, :src].any(dim=1).all()), "targets see the source"
        tgt = allowed[src:, src:]
        assert not bool(torch.triu(tgt, diagonal=1).any()), "targets are causal"
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = pattern.attend(q, k, v, layer=layer, num_layers=num_layers, layout=layout)
        assert torch.allclose(out, ref, atol=1e-5)
        for pos in range(src, n):
            keys = pattern.decode_keys(layer, num_layers, layout, pos)
            expect = allowed[pos, : pos + 1].nonzero().flatten()
            got = torch.arange(pos + 1) if keys is None else keys.cpu()
            assert torch.equal(got, expect), f"layer {layer} position {pos}"


@pytest.mark.vilgkit_kind.with_args(ParallelStrategy)
def test_parallel_strategy_contract(vilgkit_component, tmp_path):
    """Wraps a module onto its device and round-trips a checkpoint (single process)."""
    case = _case(vilgkit_component, ParallelStrategy)
    strategy = _build_or_skip(case.cls)
    if getattr(strategy, "requires_distributed", False):
        pytest.skip("needs torchrun; covered by the distributed tests")
    torch.manual_seed(0)
    model = strategy.wrap(nn.Linear(4, 3))
    state = {k: v.detach().clone() for k, v in strategy.state_dict(model).items()}
    assert set(state) == {"weight", "bias"}
    opt = strategy.build_optimizer(list(model.parameters()), lambda p: torch.optim.SGD(p, lr=0.1))
    strategy.save_checkpoint(tmp_path / "ckpt", {"model": model, "optimizer": opt})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    strategy.load_checkpoint(tmp_path / "ckpt", {"model": model, "optimizer": opt})
    for key, value in strategy.state_dict(model).items():
        assert torch.equal(value.cpu(), state[key].cpu()), key
