"""Fixtures of the reconstructor tests: a tiny tokenizer + generator (milliseconds) and a shrunk
copy of the Table 7 recipes (seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import vilgkit_reconstruct  # noqa: F401  (registers the reconstructors)


@pytest.fixture
def tiny():
    """A tiny dVAE (f=4, 16 px → 4×4 codes), a tiny generator, real-looking images, gold codes and a batch."""
    from vilgkit.testing.tiny import tiny_generator
    from vilgkit_vq import DVAETokenizer

    torch.manual_seed(0)
    tok = DVAETokenizer(codebook_size=16, code_dim=8, downsample=4, hidden=8).eval()
    gen = tiny_generator(seed=None, image_vocab_size=16)  # after the tokenizer, from the same seed
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        codes = tok.encode(images)
    batch = gen.dummy_batch(3, 6, (4, 4), generator=torch.Generator().manual_seed(0))
    batch["codes"] = codes
    return {"tok": tok, "gen": gen, "images": images, "codes": codes, "batch": batch}


ABLATIONS = Path(__file__).resolve().parents[2] / "recipes" / "ablations"


def _shrink_stage(node: dict) -> dict:
    init = node.setdefault("init_args", {}) or {}
    node["init_args"] = init
    kind = node["class_path"]
    if "trainer" in init:
        init["trainer"] = {**init["trainer"], "steps": 3, "batch_size": 4, "warmup_steps": 0, "log_every": 1}
    if kind == "TrainTokenizer":
        init["eval_images"] = 4
    if kind == "TrainShapesFeatures":
        init.update(steps=2, batch_size=8, image_size=32)
    if kind == "EvaluateReconstruction":
        init.update(num_samples=6, batch_size=3, grid_images=2)
    return node


def shrunk_ablation(dest: Path) -> Path:
    """Copy ``recipes/ablations`` into ``dest`` with tiny data, models and step counts."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(ABLATIONS.glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        if path.name == "base.yaml":
            recipe["run_dir"] = str(dest / "run")
            recipe["data"]["init_args"].update(size=16, image_size=32)
            recipe["image_tokenizer"]["init_args"].update(codebook_size=16, code_dim=8, hidden=8)
            recipe["generator"]["init_args"].update(hidden_size=16, num_layers=1, num_heads=2)
            recipe["text_tokenizer"]["init_args"]["vocab_size"] = 128
        if "stages" in recipe:
            recipe["stages"] = [_shrink_stage(s) for s in recipe["stages"]]
        (dest / path.name).write_text(yaml.safe_dump(recipe, sort_keys=False))
    return dest


@pytest.fixture
def ablations_dir() -> Path:
    return ABLATIONS


@pytest.fixture
def shrunk_ablations(tmp_path) -> Path:
    """A seconds-long copy of ``recipes/ablations`` (tiny data, models, steps) in ``tmp_path``."""
    return shrunk_ablation(tmp_path / "ablations")
