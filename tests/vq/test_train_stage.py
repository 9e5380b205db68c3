"""The train_tokenizer stage end to end through ``vilgkit run`` machinery, and loading its output."""

import json
from pathlib import Path

import pytest
import torch

from vilgkit.engine.runner import run
from vilgkit.errors import VilgkitError
from vilgkit.stages.train_tokenizer import WEIGHTS_FILE, load_image_tokenizer

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "tokenizers"


def _shorten(tmp_path: Path, steps: int, tokenizer_args: dict[str, str]) -> list[str]:
    """Overrides that turn a tiny tokenizer recipe into a seconds-long run on 32-px images."""
    over = {
        "run_dir": str(tmp_path / "run"),
        "data.init_args.size": "256",
        "data.init_args.image_size": "32",
        "stages.0.init_args.trainer.steps": str(steps),
        "stages.0.init_args.trainer.batch_size": "16",
        "stages.0.init_args.trainer.log_every": "1",
        "stages.0.init_args.trainer.precision": "fp32",
        "stages.0.init_args.eval_data.init_args.size": "16",
        "stages.0.init_args.eval_data.init_args.image_size": "32",
        "stages.0.init_args.eval_images": "16",
        "stages.0.init_args.sample_every": str(steps),
        "stages.0.init_args.num_samples": "8",
        "stages.0.init_args.min_detector_agreement": "0.0",
        **{f"image_tokenizer.init_args.{k}": v for k, v in tokenizer_args.items()},
    }
    return [x for k, v in over.items() for x in (f"--{k}", v)]


def _metrics(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_tiny_vqvae_recipe_trains_saves_and_loads(tmp_path):
    overrides = _shorten(
        tmp_path, 40, {"hidden": "8", "codebook_size": "64", "code_dim": "16", "channel_mult": "[1, 2]"}
    )
    ctx = run([str(RECIPES / "vqvae_shapes.yaml")], overrides)
    stage = ctx.run_dir / "train_tokenizer"
    for name in (WEIGHTS_FILE, "image_tokenizer.json", "reconstructions.png", "eval.json", "samples/step_000040.png"):
        assert (stage / name).is_file(), name
    rows = _metrics(stage)
    first, last = rows[0]["rec"], sum(r["rec"] for r in rows[-5:]) / 5
    assert last < 0.6 * first, f"reconstruction loss did not drop: {first} → {last}"
    manifest = json.loads((stage / "image_tokenizer.json").read_text())
    assert manifest["grid"] == [8, 8] and manifest["codebook_size"] == 64
    ev = manifest["eval"]
    assert ev["images"] == 16 and ev["psnr"] > 10 and 0 < ev["usage"] <= 1 and "detector_agreement" in ev

    # a later stage (or another run) loads the weights into the recipe's tokenizer
    trained = ctx.components["image_tokenizer"]
    ctx.components.set("image_tokenizer", ctx.components.build("image_tokenizer"))
    loaded = load_image_tokenizer(ctx, "train_tokenizer")
    assert loaded is ctx.components["image_tokenizer"] and not loaded.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), trained.eval().encode(x))
    assert load_image_tokenizer(ctx, str(stage / WEIGHTS_FILE)) is loaded  # a file path works too


def test_load_refuses_mismatching_weights(tmp_path):
    from safetensors.torch import save_file

    from vilgkit.interfaces import RunContext
    from vilgkit_vq import VQVAETokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    small = VQVAETokenizer(codebook_size=16, code_dim=8, downsample=4, hidden=8)
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(folder / WEIGHTS_FILE))
    ctx = RunContext(
        run_dir=tmp_path,
        components={"image_tokenizer": VQVAETokenizer(codebook_size=32, code_dim=8, downsample=4, hidden=8)},
    )
    with pytest.raises(VilgkitError, match=r"quantizer.embedding.weight: file \[16, 8\] vs model \[32, 8\]"):
        load_image_tokenizer(ctx, str(folder))
    with pytest.raises(FileNotFoundError):
        load_image_tokenizer(ctx, str(tmp_path / "nowhere"))


@pytest.mark.quality
def test_tiny_vqvae_recipe_meets_the_detector_bar(tmp_path):
    """Issue 5's quality bar, end to end: the shipped ``vqvae_shapes.yaml`` (64 px, f = 4) trains on the CPU
    and the Shapes detector reads the same objects from ≥ 98 % of 256 held-out reconstructions.

    The recipe itself carries ``min_detector_agreement: 0.98`` (the stage raises below it); the
    assertions repeat the numbers so a failure shows them. Minutes on 2 CPU cores (docs/performance.md).
    """
    ctx = run(
        [str(RECIPES / "vqvae_shapes.yaml")],
        ["--run_dir", str(tmp_path / "run"), "--stages.0.init_args.sample_every", "0"],
    )
    ev = json.loads((ctx.run_dir / "train_tokenizer" / "eval.json").read_text())
    assert ev["held_out"] and ev["images"] == 256
    assert ev["detector_originals"] == 1.0
    assert ev["detector_agreement"] >= 0.98, ev
    assert ev["psnr"] > 28 and ev["usage"] > 0.5, ev


@pytest.mark.parametrize("name", ["vqvae_shapes", "vqvae_shapes_f8", "dvae_shapes", "vqgan_shapes"])
def test_tiny_tokenizer_recipes_build(name):
    """Each tiny Shapes recipe parses, its tokenizer builds and round-trips a 64-px batch to its code grid."""
    from vilgkit.engine.runner import resolve
    from vilgkit.recipe import build

    recipe = resolve([str(RECIPES / f"{name}.yaml")])
    tok = build("image_tokenizer", recipe["image_tokenizer"]).eval()
    args = recipe["image_tokenizer"]["init_args"]
    if "perceptual_weight" in args:
        assert args["perceptual_weight"] == 0.0  # no local LPIPS weights: off, explicitly
    with torch.no_grad():
        codes = tok.encode(torch.rand(2, 3, 64, 64) * 2 - 1)
        assert codes.shape == (2, 64 // tok.downsample, 64 // tok.downsample) and int(codes.max()) < tok.codebook_size
        assert tok.decode(codes).shape == (2, 3, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, args",
    [
        (
            "dvae_shapes",
            {"hidden": "8", "codebook_size": "64", "code_dim": "16", "anneal_steps": "10", "kl_warmup_steps": "5"},
        ),
        (
            "vqgan_shapes",
            {"codebook_size": "64", "code_dim": "16", "z_channels": "16", "disc_start": "10", "disc_ndf": "8"},
        ),
    ],
)
def test_tiny_dvae_and_vqgan_recipes_train(tmp_path, name, args):
    """The dVAE and VQGAN recipes' training paths (Gumbel schedule; both VQGAN groups, GAN phase on) run end to end."""
    ctx = run([str(RECIPES / f"{name}.yaml")], _shorten(tmp_path, 20, args))
    stage = ctx.run_dir / "train_tokenizer"
    rows = _metrics(stage)
    assert len(rows) == 20 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if name == "vqgan_shapes":
        assert rows[-1]["discriminator/loss"] > 0 and "autoencoder/loss" in rows[-1]
    else:
        assert rows[-1]["temperature"] == pytest.approx(0.0625)
    ev = json.loads((stage / "eval.json").read_text())
    assert ev["images"] == 16 and ev["psnr"] > 5 and "detector_agreement" in ev
