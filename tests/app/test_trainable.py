"""GeneratorTrainable: raw batches tokenize to the same losses as pre-tokenized ones; the
end-to-end reconstructor hook adds its loss and trains jointly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vilgkit.interfaces import Reconstructor
from vilgkit.stages.generator_training import GeneratorTrainable, TokenizedDataset, collate_tokenized, tokenize_dataset

pytestmark = pytest.mark.slow


def _parts(run_dir):
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(run_dir, stage="train_generator", device="cpu")
    from vilgkit.data.shapes import ShapesDataset

    data = ShapesDataset(split="train", size=8, image_size=32, max_objects=2, held_out=[])
    return pipe, data


def test_raw_and_pretokenized_batches_give_identical_losses(tiny_run):
    pipe, data = _parts(tiny_run)
    module = GeneratorTrainable(
        pipe.generator, pipe.text_tokenizer, pipe.image_tokenizer, ["txt2img", "img2txt", "vqa"]
    )
    module.eval()
    tensors, stats = tokenize_dataset(data, pipe.text_tokenizer, pipe.image_tokenizer, max_text_len=32)
    assert stats == {"samples": 8, "truncated": 0}
    tokenized = collate_tokenized([TokenizedDataset(tensors)[i] for i in range(8)])
    items = [data[i] for i in range(8)]
    raw = {
        "image": torch.stack([it["image"] for it in items]),
        **{k: [it[k] for it in items] for k in ("caption", "question", "answer")},
    }
    with torch.no_grad():
        a = module(tokenized, "main", 0)
        b = module(raw, "main", 0)
    assert set(a) == {"txt2img", "img2txt", "vqa", "loss"}
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_direction_fractions_train_rehearsal_on_the_first_rows(tiny_run):
    pipe, data = _parts(tiny_run)
    dirs = ["vqa", "img2txt", "txt2img"]
    tensors, _ = tokenize_dataset(data, pipe.text_tokenizer, pipe.image_tokenizer, max_text_len=32)
    batch = collate_tokenized([TokenizedDataset(tensors)[i] for i in range(8)])
    half = collate_tokenized([TokenizedDataset(tensors)[i] for i in range(4)])
    module = GeneratorTrainable(
        pipe.generator,
        pipe.text_tokenizer,
        pipe.image_tokenizer,
        dirs,
        direction_fractions={"img2txt": 0.5, "txt2img": 0.5},
    )
    whole = GeneratorTrainable(pipe.generator, pipe.text_tokenizer, pipe.image_tokenizer, dirs)
    module.eval()
    with torch.no_grad():
        mixed = module(batch, "main", 0)
        full, first_half = whole(batch, "main", 0), whole(half, "main", 0)
    torch.testing.assert_close(mixed["vqa"], full["vqa"])  # VQA on all 8 rows
    for d in ("img2txt", "txt2img"):  # rehearsal on rows 0-3 only
        torch.testing.assert_close(mixed[d], first_half[d])
        assert not torch.allclose(mixed[d], full[d])
    torch.testing.assert_close(mixed["loss"], mixed["vqa"] + mixed["img2txt"] + mixed["txt2img"])
    with pytest.raises(ValueError, match=r"direction_fractions\['txt2img'\] must be in \(0, 1\], got 0"):
        GeneratorTrainable(pipe.generator, directions=dirs, direction_fractions={"txt2img": 0})
    with pytest.raises(ValueError, match="names 'vqa', which is not trained here"):
        GeneratorTrainable(pipe.generator, directions=["txt2img"], direction_fractions={"vqa": 0.5})


def test_direction_weights_scale_only_the_optimised_sum(tiny_run):
    pipe, data = _parts(tiny_run)
    dirs = ["vqa", "img2txt", "txt2img"]
    tensors, _ = tokenize_dataset(data, pipe.text_tokenizer, pipe.image_tokenizer, max_text_len=32)
    batch = collate_tokenized([TokenizedDataset(tensors)[i] for i in range(8)])
    plain = GeneratorTrainable(pipe.generator, pipe.text_tokenizer, pipe.image_tokenizer, dirs)
    weighted = GeneratorTrainable(
        pipe.generator,
        pipe.text_tokenizer,
        pipe.image_tokenizer,
        dirs,
        direction_fractions={"txt2img": 0.5},
        direction_weights={"vqa": 4, "txt2img": 0.5},
    )
    halved = GeneratorTrainable(
        pipe.generator, pipe.text_tokenizer, pipe.image_tokenizer, dirs, direction_fractions={"txt2img": 0.5}
    )
    pipe.generator.eval()
    with torch.no_grad():
        a, b = halved(batch, "main", 0), weighted(batch, "main", 0)
    for d in dirs:  # the logged losses are the unweighted ones
        torch.testing.assert_close(a[d], b[d])
    torch.testing.assert_close(b["loss"], 4 * b["vqa"] + b["img2txt"] + 0.5 * b["txt2img"])
    # the gradient is the weighted sum's: d(loss)/dθ = 4·d(vqa)/dθ + d(img2txt)/dθ for a vqa+img2txt module
    two = ["vqa", "img2txt"]
    grads = []
    for module, scale in (
        (GeneratorTrainable(pipe.generator, directions=two, direction_weights={"vqa": 4}), None),
        (GeneratorTrainable(pipe.generator, directions=two), 4.0),
    ):
        pipe.generator.zero_grad()
        losses = module(batch, "main", 0)
        total = losses["loss"] if scale is None else scale * losses["vqa"] + losses["img2txt"]
        total.backward()
        grads.append(pipe.generator.text_embed.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert plain.direction_weights == {}
    with pytest.raises(ValueError, match=r"direction_weights\['vqa'\] must be a finite number > 0, got -1"):
        GeneratorTrainable(pipe.generator, directions=dirs, direction_weights={"vqa": -1})
    with pytest.raises(ValueError, match="direction_weights names 'vqa', which is not trained here"):
        GeneratorTrainable(pipe.generator, directions=["txt2img"], direction_weights={"vqa": 2})


class PixelHead(Reconstructor):
    """A stand-in end-to-end reconstructor: hidden states → one colour per code cell."""

    end_to_end = True

    def __init__(self, hidden: int, cell: int) -> None:
        super().__init__()
        self.proj, self.cell = nn.Linear(hidden, 3), cell

    def reconstruct(self, codes, image_hidden=None):
        h, w = codes.shape[1:]
        rgb = self.proj(image_hidden).tanh().transpose(1, 2).reshape(-1, 3, h, w)
        return rgb.repeat_interleave(self.cell, 2).repeat_interleave(self.cell, 3)

    def loss(self, images, codes, image_hidden=None):
        return {"loss": (self.reconstruct(codes, image_hidden) - images).pow(2).mean()}


def test_end_to_end_reconstructor_loss_is_added_and_reaches_the_generator(tiny_run):
    pipe, data = _parts(tiny_run)
    rec = PixelHead(pipe.generator.hidden_size, 8)
    module = GeneratorTrainable(
        pipe.generator, pipe.text_tokenizer, pipe.image_tokenizer, reconstructor=rec, reconstructor_weight=0.5
    )
    assert any(p is rec.proj.weight for p in module.optimizer_groups()["main"])
    assert not any(p is q for p in module.optimizer_groups()["main"] for q in pipe.image_tokenizer.parameters())
    items = [data[i] for i in range(4)]
    batch = {"image": torch.stack([it["image"] for it in items]), "caption": [it["caption"] for it in items]}
    losses = module(batch, "main", 0)
    torch.testing.assert_close(losses["loss"], losses["txt2img"] + losses["img2txt"] + 0.5 * losses["reconstruct"])
    losses["loss"].backward()
    assert rec.proj.weight.grad is not None and pipe.generator.layers[-1].mlp.fc2.weight.grad.abs().sum() > 0
    # a non-end-to-end reconstructor is ignored by training
    rec.end_to_end = False
    assert GeneratorTrainable(pipe.generator, reconstructor=rec).reconstructor is None


def test_tokenized_sample_lengths_count_every_real_text_id():
    masks = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    data = TokenizedDataset(
        {
            "codes": torch.zeros(3, 2, 2, dtype=torch.long),
            "text_ids": torch.zeros(3, 4, dtype=torch.long),
            "text_mask": masks,
            "answer_mask": masks[:, :2],
        }
    )
    assert data.sample_lengths() == [4, 6, 5]
    assert TokenizedDataset({"codes": torch.zeros(2, 2, 2, dtype=torch.long)}).sample_lengths() == [0, 0]


def test_dataset_fingerprint_sees_a_change_to_a_few_samples_only():
    """The tokenized cache must be rebuilt when a recipe change redraws only some samples' texts
    (``train_question_weights`` does), not only when the first, middle or last sample changes."""
    from vilgkit.data import ShapesDataset
    from vilgkit.stages.generator_training import dataset_fingerprint

    rows = [{"caption": f"caption {i}", "question": "what?", "index": i} for i in range(400)]
    edited = [dict(r) for r in rows]
    edited[6]["question"] = "where?"  # away from indices 0, 1, 200 and 399
    assert dataset_fingerprint(rows) == dataset_fingerprint([dict(r) for r in rows])
    assert dataset_fingerprint(rows) != dataset_fingerprint(edited)
    assert dataset_fingerprint([]) != dataset_fingerprint(rows[:1])  # an empty set is fingerprinted, not indexed
    plain = ShapesDataset(size=400, image_size=16, seed=1)
    weighted = ShapesDataset(size=400, image_size=16, seed=1, train_question_weights={"position": 3.0})
    assert dataset_fingerprint(plain) != dataset_fingerprint(weighted)
