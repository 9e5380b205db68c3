"""A seconds-long ablation recipe set: two rows (two generators over one shared tokenizer) with an
``ablation.yaml`` that shares the tokenizer stages between seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vilgkit.testing.tiny import CPU_STRATEGY, tiny_shapes_sections

BASE = {
    "run_dir": "runs/never_used",
    "seed": 0,
    **tiny_shapes_sections(),
    "strategy": CPU_STRATEGY,
}
SHARED = [
    {"class_path": "FitTextTokenizer"},
    {
        "class_path": "TrainTokenizer",
        "init_args": {"trainer": {"steps": 2, "batch_size": 8, "warmup_steps": 0, "log_every": 1}, "eval_images": 4},
    },
]


def _row(lr: float) -> dict:
    return {
        "stages": [
            *SHARED,
            {
                "class_path": "TrainGenerator",
                "init_args": {
                    "trainer": {"steps": 2, "batch_size": 8, "lr": lr, "warmup_steps": 0, "log_every": 1},
                    "sample_every": 0,
                },
            },
            {
                "class_path": "Evaluate",
                "init_args": {"metrics": ["shapes", "vqa"], "num_samples": 4, "batch_size": 4, "num_candidates": 1},
            },
        ]
    }


SETTINGS = {
    "title": "tiny",
    "seeds": [0, 1],
    "shared_stages": ["fit_text_tokenizer", "train_tokenizer"],
    "rows": {1: {"label": "low lr"}, 2: {"label": "high lr", "omit": ["vqa_accuracy"]}},
    "claims": [{"claim": "high lr beats low lr", "better": 2, "worse": 1, "metrics": ["shapes_prompt_accuracy"]}],
    "loss_curve": {"stage": "train_generator", "key": "loss"},
    "bootstrap": {"resamples": 500},
}


def write_set(folder: Path, settings: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump({**BASE, "run_dir": str(folder / "run")}, sort_keys=False))
    (folder / "row1_low_lr.yaml").write_text(yaml.safe_dump(_row(1e-3), sort_keys=False))
    (folder / "row2_high_lr.yaml").write_text(yaml.safe_dump(_row(3e-3), sort_keys=False))
    (folder / "ablation.yaml").write_text(yaml.safe_dump(settings or SETTINGS, sort_keys=False))
    return folder


@pytest.fixture
def tiny_set(tmp_path) -> Path:
    """The two-row, two-seed set in ``tmp_path/set`` (its root: ``tmp_path/set/run``)."""
    return write_set(tmp_path / "set")
