"""Shrink the shipped ablation recipes to a seconds-long smoke version (tests only)."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ABLATIONS = ROOT / "recipes" / "ablations"


def _shrink_stage(node: dict) -> dict:
    init = node.setdefault("init_args", {}) or {}
    node["init_args"] = init
    kind = node["class_path"]
    if "trainer" in init:
        init["trainer"] = {**init["trainer"], "steps": 3, "batch_size": 4, "warmup_steps": 0, "log_every": 1}
    if kind == "TrainTokenizer":
        init["eval_images"] = 4
    if kind == "TrainShapesFeatures":
        init.update(steps=2, batch_size=8)
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
            recipe["data"]["init_args"]["size"] = 16
            recipe["image_tokenizer"]["init_args"].update(codebook_size=16, code_dim=8, hidden=8)
            recipe["generator"]["init_args"].update(hidden_size=16, num_layers=1, num_heads=2)
            recipe["text_tokenizer"]["init_args"]["vocab_size"] = 128
        if "stages" in recipe:
            recipe["stages"] = [_shrink_stage(s) for s in recipe["stages"]]
        (dest / path.name).write_text(yaml.safe_dump(recipe, sort_keys=False))
    return dest
