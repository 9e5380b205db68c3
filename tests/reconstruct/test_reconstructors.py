"""Behaviour of the two reconstructors: gradient flow, gold decoding, save/load, pipeline decoding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vilgkit.pipeline import Pipeline
from vilgkit.stages.generator_training import GeneratorTrainable
from vilgkit_reconstruct import EndToEndReconstructor, TwoStageReconstructor


class _Text:
    """Just enough of a text tokenizer for Pipeline.decode_codes."""

    vocab_size, pad_id, bos_id, eos_id = 40, 0, 2, 3


def _generator_grads(gen) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in gen.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_end_to_end_reconstruction_loss_reaches_the_generator(tiny):
    gen, tok = tiny["gen"], tiny["tok"]
    rec = EndToEndReconstructor().attach(tok, gen.hidden_size)
    out = gen({**tiny["batch"], "directions": ["txt2img"]})
    rec.loss(tiny["images"], tiny["codes"], out.image_hidden)["loss"].backward()  # the reconstruction loss alone
    grads = _generator_grads(gen)
    # it reaches the last block, the attention of the first block and the image-code embeddings
    assert any(n.startswith("layers.1.") for n in grads)
    assert any(n.startswith("layers.0.") for n in grads)
    assert "image_embed.weight" in grads
    # and the reconstructor's own map and decoder train too; the tokenizer it was copied from does not
    assert rec.map[2].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in rec.decoder.decoder.parameters())
    assert all(p.grad is None for p in tok.parameters())


def test_two_stage_reconstruction_loss_does_not_reach_the_generator(tiny):
    gen, tok = tiny["gen"], tiny["tok"]
    rec = TwoStageReconstructor().attach(tok, gen.hidden_size)
    out = gen({**tiny["batch"], "directions": ["txt2img"]})
    loss = rec.loss(tiny["images"], tiny["codes"], out.image_hidden)["loss"]
    assert not loss.requires_grad  # no path from the hidden states to the loss
    assert list(rec.parameters()) == [] and rec.state_dict() == {}
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(tok.decode(tiny["codes"]), tiny["images"]))


@pytest.mark.parametrize("kind", [TwoStageReconstructor, EndToEndReconstructor])
def test_generator_trainable_adds_the_loss_only_end_to_end(tiny, kind):
    """Through the training hook: the generator's gradients change with the reconstructor only end to end."""
    gen, tok = tiny["gen"], tiny["tok"]
    batch = {**tiny["batch"], "image": tiny["images"]}

    def grads(reconstructor):
        gen.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        module = GeneratorTrainable(gen, None, tok, ["txt2img"], reconstructor, reconstructor_weight=1.0)
        losses = module(batch, "main", 0)
        losses["loss"].backward()
        return losses, _generator_grads(gen)

    base_losses, base = grads(None)
    rec = kind().attach(tok, gen.hidden_size)
    losses, with_rec = grads(rec)
    if kind.end_to_end:
        torch.testing.assert_close(losses["loss"], losses["txt2img"] + losses["reconstruct"])
        assert any(not torch.allclose(base[n], with_rec[n]) for n in base)
    else:
        assert "reconstruct" not in losses
        assert base.keys() == with_rec.keys() and all(torch.equal(base[n], with_rec[n]) for n in base)


def test_gold_sequence_two_stage_decode_equals_the_tokenizer_decode(tiny):
    gen, tok, images = tiny["gen"], tiny["tok"], tiny["images"]
    rec = TwoStageReconstructor(tok)
    with torch.no_grad():
        gold = tok.encode(images)  # the real images' code sequences (teacher forcing)
        want = tok.decode(gold)
        got = rec.reconstruct(gold)
        piped = Pipeline(gen, _Text(), tok, (4, 4), rec, device="cpu").decode_codes(gold)
    assert torch.allclose(got, want, atol=1e-6, rtol=0) and torch.allclose(piped, want, atol=1e-6, rtol=0)


def test_gold_sequence_end_to_end_decode_uses_teacher_forced_hidden_states(tiny):
    gen, tok, images, batch = tiny["gen"], tiny["tok"], tiny["images"], tiny["batch"]
    rec = EndToEndReconstructor(map_init_std=0.0).attach(tok, gen.hidden_size)
    pipe = Pipeline(gen, _Text(), tok, (4, 4), rec, device="cpu")
    with torch.no_grad():
        gold = tok.encode(images)
        hidden = gen.image_hidden_states(batch["text_ids"], batch["text_mask"], gold)
        piped = pipe.decode_codes(gold, batch["text_ids"], batch["text_mask"])
        # with a zero map the end-to-end reconstructor starts as the tokenizer's decode (decoder copied)
        assert torch.allclose(piped, tok.decode(gold), atol=1e-6, rtol=0)
        torch.nn.init.normal_(rec.map[2].weight, std=0.5)
        piped = pipe.decode_codes(gold, batch["text_ids"], batch["text_mask"])
        assert torch.allclose(piped, rec.reconstruct(gold, hidden), atol=1e-6, rtol=0)
        assert not torch.allclose(piped, tok.decode(gold), atol=1e-3)  # now the hidden states matter
    with pytest.raises(ValueError, match="hidden states"):
        rec.reconstruct(gold)


@pytest.mark.parametrize("kind", [None, TwoStageReconstructor, EndToEndReconstructor])
def test_pipeline_decodes_in_chunks_as_in_one_batch(tiny, monkeypatch, kind):
    """``decode_codes`` decodes DECODE_BATCH images at a time; the chunks (here 2 + 1) give the one-batch images."""
    gen, tok, batch = tiny["gen"], tiny["tok"], tiny["batch"]
    rec = None if kind is None else kind(map_init_std=0.5) if kind.end_to_end else kind()
    rec = None if rec is None else rec.attach(tok, gen.hidden_size)
    pipe = Pipeline(gen, _Text(), tok, (4, 4), rec, device="cpu")
    with torch.no_grad():
        whole = pipe.decode_codes(tiny["codes"], batch["text_ids"], batch["text_mask"])
        monkeypatch.setattr("vilgkit.pipeline.DECODE_BATCH", 2)
        chunked = pipe.decode_codes(tiny["codes"], batch["text_ids"], batch["text_mask"])
    assert chunked.shape == whole.shape == (3, 3, 16, 16)
    if rec is None or not rec.end_to_end:  # no codes, no images (the generator takes no empty batch)
        assert pipe.decode_codes(tiny["codes"][:0]).shape == (0, 3, 16, 16)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_end_to_end_model_save_load_round_trip(tiny, tmp_path):
    """Generator + end-to-end reconstructor after a training step → safetensors → fresh objects: same images."""
    from vilgkit.models import UnifiedTransformer
    from vilgkit_vq import DVAETokenizer

    gen, tok, batch = tiny["gen"], tiny["tok"], {**tiny["batch"], "image": tiny["images"]}
    rec = EndToEndReconstructor().attach(tok, gen.hidden_size)
    module = GeneratorTrainable(gen, None, tok, ["txt2img"], rec)
    opt = torch.optim.AdamW(module.optimizer_groups()["main"], lr=1e-2)
    module(batch, "main", 0)["loss"].backward()
    opt.step()
    state = module.state_dict()  # split by prefix as the generator stage saves it
    for prefix in ("generator.", "reconstructor."):
        save_file(
            {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)},
            str(tmp_path / f"{prefix}st"),
        )

    torch.manual_seed(123)  # different random weights everywhere, so only the files can make them agree
    gen2 = UnifiedTransformer(
        **{
            k: getattr(gen, k)
            for k in (
                "text_vocab_size",
                "image_vocab_size",
                "hidden_size",
                "num_layers",
                "num_heads",
                "max_text_len",
                "max_image_grid",
            )
        }
    )
    rec2 = EndToEndReconstructor().attach(
        DVAETokenizer(codebook_size=16, code_dim=8, downsample=4, hidden=8), gen2.hidden_size
    )
    gen2.load_state_dict(load_file(str(tmp_path / "generator.st")))
    rec2.load_state_dict(load_file(str(tmp_path / "reconstructor.st")))
    before = Pipeline(gen, _Text(), tok, (4, 4), rec, device="cpu")
    after = Pipeline(gen2, _Text(), tok, (4, 4), rec2, device="cpu")
    codes, ids, mask = tiny["codes"], batch["text_ids"], batch["text_mask"]
    assert torch.equal(before.decode_codes(codes, ids, mask), after.decode_codes(codes, ids, mask))
    with pytest.raises(RuntimeError, match="attach"):
        EndToEndReconstructor().load_state_dict(load_file(str(tmp_path / "reconstructor.st")))


def test_attach_checks_and_keeps_trained_weights(tiny):
    tok, gen = tiny["tok"], tiny["gen"]
    rec = EndToEndReconstructor().attach(tok, gen.hidden_size)
    with torch.no_grad():
        rec.map[0].weight.add_(1.0)
    kept = rec.map[0].weight.clone()
    rec.attach(tok, gen.hidden_size)  # attaching again (e.g. the pipeline after the stage) keeps them
    assert torch.equal(rec.map[0].weight, kept)
    with pytest.raises(ValueError, match="hidden_size"):
        rec.attach(tok, gen.hidden_size + 1)
    with pytest.raises(ValueError, match="hidden_size"):
        EndToEndReconstructor().attach(tok)
    with pytest.raises(TypeError):
        TwoStageReconstructor().attach(gen)
    with pytest.raises(RuntimeError, match="attach"):
        TwoStageReconstructor().reconstruct(tiny["codes"])
    # the copy's encoder takes no gradients (only the decode path trains)
    assert not any(p.requires_grad for p in rec.decoder.encoder.parameters())
    assert all(p.requires_grad for p in rec.decoder.decoder.parameters())


@pytest.mark.parametrize("kind", [TwoStageReconstructor, EndToEndReconstructor])
def test_pipeline_text_to_image_decodes_with_the_recipes_reconstructor(tiny, kind):
    """``text_to_image`` = sample codes → the reconstructor (end-to-end: after one teacher-forced pass)."""
    import numpy as np

    from vilgkit_text import WordPieceTokenizer

    gen, tok = tiny["gen"], tiny["tok"]
    text = WordPieceTokenizer(vocab_size=40)
    text.fit(["a red circle", "a blue square at the top", "a small green star"] * 3)
    rec = kind(map_init_std=0.5) if kind is EndToEndReconstructor else kind()
    pipe = Pipeline(gen, text, tok, (4, 4), rec.attach(tok, gen.hidden_size), device="cpu")
    prompts = ["a red circle", "a small green star"]
    images = pipe.text_to_image(prompts, seed=3)
    codes, ids, mask = pipe.sample_codes(prompts, seed=3)
    with torch.no_grad():
        hidden = gen.image_hidden_states(ids, mask, codes) if kind.end_to_end else None
        want = rec.reconstruct(codes, hidden)
    want = ((want.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()
    got = np.stack([np.asarray(im) for im in images])
    assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    if kind.end_to_end:  # the hidden states matter: the tokenizer's own decode differs
        plain = ((tok.decode(codes) + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()
        assert np.abs(got.astype(int) - plain.astype(int)).max() > 1
