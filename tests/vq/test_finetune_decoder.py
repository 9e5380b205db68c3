"""FinetuneDecoder: the decoder trains alone on the frozen encoder's codes, through ``vilgkit run``."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from vilgkit import Pipeline
from vilgkit.artifacts import load_tensors
from vilgkit.engine.runner import run
from vilgkit.errors import VilgkitError
from vilgkit.interfaces import ImageTokenizer
from vilgkit.stages.finetune_decoder import DecoderOnly
from vilgkit_vq import VQVAETokenizer

GEN_TINY = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "gen_tiny.yaml"


def _tokenizer() -> VQVAETokenizer:
    torch.manual_seed(0)
    return VQVAETokenizer(codebook_size=16, code_dim=8, downsample=4, hidden=8, ema=True, restart_dead_codes=True)


def test_decoder_only_trains_the_decoder_and_nothing_else():
    tok = _tokenizer()
    frozen = {k: v.clone() for k, v in tok.state_dict().items() if not k.startswith("decoder.")}
    decoder = {k: v.clone() for k, v in tok.state_dict().items() if k.startswith("decoder.")}
    model = DecoderOnly(tok).train()
    (group,) = model.optimizer_groups().values()
    assert {id(p) for p in group} == {id(p) for p in tok.decoder.parameters()}
    opt = torch.optim.Adam(group, lr=1e-2)
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    losses = []
    for _ in range(30):
        loss = model({"image": images})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = tok.state_dict()
    # encoder, codebook and the EMA / usage statistics are untouched, so the codes are too
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not all(torch.equal(state[k], v) for k, v in decoder.items())
    assert losses[-1] < 0.7 * losses[0], losses


def test_decoder_loss_reconstructs_from_the_full_precision_codes():
    tok = _tokenizer().eval()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        codes = tok.encode(images)
        expected = ((tok.decoder(tok.quantizer.lookup(codes)) - images) ** 2).mean()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 trainer must not change the codes
            out = tok.decoder_loss(images)
    assert tok.edge_weight == 0.0  # so the loss is the plain MSE
    assert out["loss"].item() == pytest.approx(expected.item(), rel=0.05)
    assert set(out) >= {"loss", "rec", "psnr", "usage"}


def test_a_tokenizer_without_a_separable_decoder_is_refused():
    class Opaque(ImageTokenizer):
        codebook_size, downsample, code_dim = 4, 4, 2

        def encode(self, images):
            return images.new_zeros(images.shape[0], 1, 1, dtype=torch.long)

        def embed(self, codes):
            raise NotImplementedError

        def decode_embedding(self, z_emb):
            raise NotImplementedError

        def loss(self, images):
            raise NotImplementedError

    with pytest.raises(NotImplementedError, match="Opaque cannot train its decoder alone"):
        DecoderOnly(Opaque())


def _recipe_with_decoder_stage(tmp_path: Path, steps: int) -> Path:
    recipe = yaml.safe_load(GEN_TINY.read_text())
    recipe["run_dir"] = str(tmp_path / "run")
    stages = recipe["stages"]
    at = next(i for i, s in enumerate(stages) if s["class_path"] == "TrainTokenizer") + 1
    stages.insert(
        at,
        {
            "class_path": "FinetuneDecoder",
            "init_args": {
                "trainer": {"steps": steps, "batch_size": 16, "lr": 0.005, "warmup_steps": 0, "log_every": 1},
                "eval_images": 8,
            },
        },
    )
    for stage in stages[at + 1 :]:
        if stage["class_path"] in ("TrainGenerator", "FinetuneVQA"):
            stage.setdefault("init_args", {})["image_tokenizer_from"] = "finetune_decoder"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_recipe_stage_keeps_the_codes_and_the_pipeline_decodes_with_the_new_decoder(tmp_path):
    ctx = run([str(_recipe_with_decoder_stage(tmp_path, steps=25))])
    before = load_tensors(ctx.run_dir / "train_tokenizer" / "image_tokenizer.safetensors")
    after = load_tensors(ctx.run_dir / "finetune_decoder" / "image_tokenizer.safetensors")
    assert before.keys() == after.keys()
    for key in before:  # the encoder and the codebook (and its statistics) come through bit for bit
        same = torch.equal(before[key], after[key])
        assert same != key.startswith("decoder."), key

    stage = ctx.run_dir / "finetune_decoder"
    for name in ("image_tokenizer.json", "eval.json", "reconstructions.png"):
        assert (stage / name).is_file(), name
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first, last = rows[0]["rec"], sum(r["rec"] for r in rows[-5:]) / 5
    assert last < first, f"the decoder's reconstruction loss did not drop: {first} → {last}"

    record = json.loads((ctx.run_dir / "finetune_vqa" / "generator.json").read_text())
    assert record["image_tokenizer"] == "finetune_decoder"
    pipe = Pipeline.from_run_dir(ctx.run_dir)
    codes = torch.randint(0, pipe.image_tokenizer.codebook_size, (2, *pipe.grid))
    tuned = VQVAETokenizer(**yaml.safe_load(GEN_TINY.read_text())["image_tokenizer"]["init_args"])
    tuned.load_state_dict(after)
    with torch.no_grad():
        assert torch.equal(pipe.decode_codes(codes), tuned.eval().decode(codes).float())


def test_stage_names_the_tokenizer_it_cannot_fine_tune(tmp_path, monkeypatch):
    monkeypatch.setattr(VQVAETokenizer, "decoder_parameters", ImageTokenizer.decoder_parameters)
    with pytest.raises(VilgkitError, match="finetune_decoder: VQVAETokenizer cannot train its decoder alone"):
        run([str(_recipe_with_decoder_stage(tmp_path, steps=2))], stages=None)
