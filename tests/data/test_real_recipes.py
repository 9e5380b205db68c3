"""recipes/real/wds_tiny.yaml end to end through the CLI, on files in the published layouts written
here: img2dataset tars (3 aspect ratios, English + Chinese, planted bad samples), a bert-base-chinese
layout vocab.txt, a taming-layout VQGAN checkpoint and FID Inception weights (random, published keys).
Then `vilgkit generate`, `caption`, `vqa` and `eval` on the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vilgkit.cli import main as cli
from vilgkit.testing.real_data import (
    write_bert_vocab,
    write_img2dataset_shards,
    write_taming_checkpoint,
)

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "real" / "wds_tiny.yaml"


def _inception_weights(path: Path) -> Path:
    from vilgkit.metrics.inception import build_fid_inception

    torch.manual_seed(0)
    torch.save(build_fid_inception().state_dict(), path)  # pytorch-fid's layout: a plain state dict
    return path


@pytest.mark.slow
def test_wds_tiny_recipe_then_every_inference_command(tmp_path, capsys):
    kept = write_img2dataset_shards(tmp_path / "shards", num_shards=2, per_shard=12)
    held = write_img2dataset_shards(tmp_path / "val", num_shards=1, per_shard=8, split="test", bad_samples=False)
    write_bert_vocab(tmp_path / "vocab.txt", [r["caption"] for r in kept + held])
    ckpt, _ = write_taming_checkpoint(tmp_path / "taming")
    fid = _inception_weights(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    run = tmp_path / "run"
    overrides = [
        "--run_dir",
        str(run),
        "--data.init_args.urls",
        str(tmp_path / "shards"),
        "--text_tokenizer.init_args.vocab_file",
        str(tmp_path / "vocab.txt"),
        "--image_tokenizer.init_args.checkpoint",
        str(ckpt),
        "--stages.2.init_args.trainer.steps",
        "6",  # the shipped 40 steps take minutes here; 6 show the path
        "--stages.3.init_args.data.init_args.urls",
        str(tmp_path / "val"),
        "--stages.3.init_args.fid_weights",
        str(fid),
        "--stages.3.init_args.num_samples",
        "8",
    ]
    assert cli(["run", str(RECIPE), *overrides]) == 0
    out = capsys.readouterr().out
    assert "used as it is, not fitted" in out
    fit = json.loads((run / "fit_text_tokenizer" / "fit_summary.json").read_text())
    assert fit["fitted"] is False and fit["vocab_size"] == len((tmp_path / "vocab.txt").read_text().splitlines())
    record = json.loads((run / "evaluate" / "eval.json").read_text())
    assert record["num_samples"] == 8 and record["data"] == "given by the caller"
    for key in ("bleu4_en", "meteor_en", "rouge_l_en", "cider_en", "bleu4_zh", "cider_zh", "fid"):
        assert key in record["metrics"], key  # Chinese scored per character, English per word
    assert record["metric_settings"]["CaptionMetrics[zh]"]["mode"] == "char"
    generator = json.loads((run / "train_generator" / "generator.json").read_text())
    assert generator["data"]["streamed"] is True and generator["grid"] == [8, 8]

    image = tmp_path / "val_image.jpg"
    from PIL import Image

    Image.new("RGB", (320, 240), (200, 30, 30)).save(image)
    from vilgkit.errors import UnknownWordsWarning

    # mostly [UNK]: a warning naming the prompt and its words (the CLI prints it as one line; under
    # pytest, which records warnings itself, it is caught here instead)
    with pytest.warns(UnknownWordsWarning, match=r"prompt 1 .*'猫'"):
        assert cli(["generate", str(run), "a small red circle", "猫猫猫", "--out", str(tmp_path / "gen")]) == 0
    assert (tmp_path / "gen" / "grid.png").is_file()
    assert cli(["caption", str(run), str(image), "--out", str(tmp_path / "cap")]) == 0
    assert (
        cli(
            [
                "vqa",
                str(run),
                "--image",
                str(image),
                "--question",
                "what colour is the circle?",
                "--out",
                str(tmp_path / "vqa"),
            ]
        )
        == 0
    )
    # the run's Evaluate stage gives the held-out data and the FID feature space (local Inception weights)
    assert (
        cli(
            [
                "eval",
                str(run),
                "--metrics",
                "caption,fid",
                "--num-samples",
                "4",
                "--num-candidates",
                "1",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    cli_record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert cli_record["data"]["init_args"]["urls"] == str(tmp_path / "val")  # the held-out split, not training data
    assert cli_record["num_samples"] == 4 and "fid" in cli_record["metrics"]
    assert cli_record["metric_settings"]["FID"]["extractor"].startswith("inception")
