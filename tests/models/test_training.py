"""Training behaviour: finite decreasing losses, text dropout, gradients, state dicts, meta builds."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.models.conftest import TINY_MODEL, ReferenceSparsePattern, tiny_model
from vilgkit.models import UnifiedTransformer
from vilgkit.registry import GENERATORS
from vilgkit.testing.tiny import tiny_generator


def _overfit(model, batch, steps, lr=3e-3):
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.AdamW(model.optimizer_groups()["main"], lr=lr, weight_decay=0.0)
    history = []
    for step in range(steps):
        losses = model.training_losses(model(batch), batch, "main", step)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


@pytest.mark.parametrize("sparse", [False, True])
def test_losses_finite_and_decrease_on_overfit_batch(sparse):
    model = tiny_generator(attention=ReferenceSparsePattern() if sparse else None)
    batch = model.dummy_batch(4, 8, (3, 3), vqa=True, generator=torch.Generator().manual_seed(0))
    history = _overfit(model, batch, 40)
    first, last = history[0], history[-1]
    assert set(first) == {"txt2img", "img2txt", "vqa", "loss"}
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert abs(first["loss"] - (first["txt2img"] + first["img2txt"] + first["vqa"])) < 1e-5
    for key in ("txt2img", "img2txt", "vqa"):
        assert last[key] < 0.5 * first[key], (key, first[key], last[key])


# Reference curve: UnifiedTransformer(40, 24, 32 hidden, 2 layers), dummy_batch(4, 8, (3, 3), seed 0),
# AdamW lr 3e-3, total loss at steps 0, 5, 10, 15 (regression guard for init, masks and losses).
REFERENCE_LOSSES = [6.920381, 5.610857, 4.731755, 3.900816]


def test_reference_loss_curve():
    model = tiny_generator()
    batch = model.dummy_batch(4, 8, (3, 3), generator=torch.Generator().manual_seed(0))
    losses = [h["loss"] for h in _overfit(model, batch, 16)][::5]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(REFERENCE_LOSSES), rtol=1e-3, atol=1e-3)


def test_gradients_reach_every_parameter():
    model = tiny_model(ReferenceSparsePattern())
    model.train()
    batch = model.dummy_batch(2, 6, (2, 3), vqa=True, generator=torch.Generator().manual_seed(0))
    model(batch).losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_text_dropout_uses_the_empty_prompt():
    model = tiny_model(text_dropout=0.999)
    batch = model.dummy_batch(3, 6, (2, 2), generator=torch.Generator().manual_seed(0))
    batch["directions"] = ["txt2img"]
    ids, mask = model.empty_prompt(3, 6)
    assert ids[0, :3].tolist() == [model.bos_id, model.eos_id, model.pad_id] and mask[0].sum() == 2
    torch.manual_seed(0)
    model.train()
    dropped = model(batch).losses["txt2img"]
    model.eval()
    with torch.no_grad():
        empty = model({**batch, "text_ids": ids, "text_mask": mask}).losses["txt2img"]
        kept = model(batch).losses["txt2img"]  # eval: no text dropout
    torch.testing.assert_close(dropped.detach(), empty)
    assert not torch.allclose(kept, empty)


def test_image_hidden_states_match_forward():
    model = tiny_model()
    batch = model.dummy_batch(2, 6, (3, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(batch)
        hidden = model.image_hidden_states(batch["text_ids"], batch["text_mask"], batch["codes"])
    assert hidden.shape == (2, 6, model.hidden_size)
    torch.testing.assert_close(hidden, out.image_hidden)
    torch.testing.assert_close(model.image_head(hidden), out.logits["txt2img"])


def test_state_dict_round_trip_through_safetensors(tmp_path):
    model = tiny_model()
    batch = model.dummy_batch(2, 6, (2, 2), vqa=True, generator=torch.Generator().manual_seed(0))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "g.safetensors"))
    fresh = tiny_generator(seed=123, **TINY_MODEL).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "g.safetensors")))
    with torch.no_grad():
        for key, value in model(batch).logits.items():
            assert torch.equal(fresh(batch).logits[key], value)


def test_builds_on_meta_and_materialises():
    with torch.device("meta"):
        model = UnifiedTransformer(50, 30, hidden_size=64, num_layers=2, num_heads=4)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    batch = model.dummy_batch(2, 5, (2, 2))
    assert torch.isfinite(model(batch).losses["loss"])
    assert len(model.blocks()) == 2 and GENERATORS.get("UnifiedTransformer") is UnifiedTransformer


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=30, num_heads=4), "divisible"),
        (dict(bos_id=99), "bos_id"),
        (dict(text_dropout=1.0), "text_dropout"),
        (dict(num_layers=0), "num_layers"),
        (dict(attention="dense"), "AttentionPattern"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        UnifiedTransformer(40, 24, **kwargs)


def test_bad_batches_get_clear_errors():
    model = tiny_model()
    batch = model.dummy_batch(2, 6, (2, 2))
    cases = [
        ({"codes": batch["codes"].float()}, "codes must be a Long"),
        ({"codes": batch["codes"] + 100}, "codes contain values"),
        ({"text_ids": batch["text_ids"] + 100}, "outside"),
        ({"text_mask": batch["text_mask"].flip(1)}, "right-padded|real token"),
        ({"codes": torch.zeros(2, 5, 5, dtype=torch.long)}, "max_image_grid"),
        ({"codes": batch["codes"][:1]}, "batch sizes differ"),
        ({"directions": ["txt2img", "sideways"]}, "unknown directions"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            model({**batch, **change})
    with pytest.raises(ValueError, match="neither"):
        model({"codes": batch["codes"]})
