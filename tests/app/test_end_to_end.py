"""The debug recipe end to end: stage outputs, reference loss curve, Pipeline round trip, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vilgkit.errors import InputError

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).parent / "assets"


def _losses(path: Path) -> list[dict[str, float]]:
    keep = ("loss", "txt2img", "img2txt", "vqa")
    return [
        {k: row[k] for k in keep if k in row} | {"step": row["step"]}
        for row in map(json.loads, path.read_text().splitlines())
        if "loss" in row
    ]


def test_stages_write_what_the_pipeline_needs(tiny_run):
    for stage in ("train_generator", "finetune_vqa"):
        folder = tiny_run / stage
        assert (folder / "generator.safetensors").is_file()
        manifest = json.loads((folder / "generator.json").read_text())
        assert manifest["grid"] == [4, 4] and manifest["image_size"] == [32, 32]
        assert manifest["max_text_len"] == 32
    assert json.loads((tiny_run / "finetune_vqa" / "generator.json").read_text())["directions"] == ["vqa"]
    samples = tiny_run / "train_generator" / "samples"
    assert (samples / "step_000006_images.png").is_file() and (samples / "step_000006_captions.png").is_file()
    assert len((samples / "captions.jsonl").read_text().splitlines()) == 1


def test_each_direction_is_logged_and_matches_reference_curve(tiny_run):
    """Loss-curve regression: same seed, same recipe → the stored losses (rtol 0.5 %: CPU float noise only)."""
    reference = json.loads((ASSETS / "gen_tiny_losses.json").read_text())
    for stage in ("train_generator", "finetune_vqa"):
        got = _losses(tiny_run / stage / "metrics.jsonl")
        want = reference[stage]
        assert [r["step"] for r in got] == [r["step"] for r in want]
        for g, w in zip(got, want):
            assert set(g) == set(w), f"{stage} step {w['step']}: logged {sorted(g)} expected {sorted(w)}"
            for key in w:
                assert g[key] == pytest.approx(w[key], rel=5e-3), f"{stage} step {w['step']} {key}"
    first, last = reference["train_generator"][0], reference["train_generator"][-1]
    assert last["loss"] < first["loss"]  # the reference itself shows learning


def test_finetune_continued_from_train_generator(tiny_run):
    base = load_file(str(tiny_run / "train_generator" / "generator.safetensors"))
    tuned = load_file(str(tiny_run / "finetune_vqa" / "generator.safetensors"))
    assert base.keys() == tuned.keys()
    moved = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert moved, "fine-tuning changed nothing"
    # a few steps from the trained weights stay close to them (they did not restart from scratch)
    rel = (tuned["text_embed.weight"] - base["text_embed.weight"]).norm() / base["text_embed.weight"].norm()
    assert rel < 0.2


def test_pipeline_loads_the_run_and_is_reproducible(tiny_run):
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(tiny_run, device="cpu")
    assert pipe.stage_dir.name == "finetune_vqa" and pipe.grid == (4, 4) and pipe.image_size == 32
    saved = load_file(str(tiny_run / "finetune_vqa" / "generator.safetensors"))
    for k, v in pipe.generator.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    prompts = ["a small red circle at the top", "a large blue square in the centre"]
    a = pipe.text_to_image(prompts, num_candidates=3, reranker="self", seed=7)
    b = pipe.text_to_image(prompts, num_candidates=3, reranker="self", seed=7)
    assert len(a) == 2 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    every = pipe.text_to_image(prompts, num_candidates=3, reranker=None, seed=7, return_all=True)
    assert [len(c) for c in every] == [3, 3]
    captions = pipe.image_to_text(a)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert len(pipe.answer(a[:1], ["what colour is the circle?", "how many shapes are there?"])) == 2
    earlier = Pipeline.from_run_dir(tiny_run, stage="train_generator", device="cpu")
    assert earlier.stage_dir.name == "train_generator"


def test_self_reranking_keeps_the_most_likely_candidate(tiny_run):
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(tiny_run, device="cpu")
    codes, ids, mask = pipe.sample_codes(["a small red circle at the top", "a large star"], 4, seed=3)
    order = pipe.rerank(codes, ids, mask, 4, "self")
    scores = pipe.generator.text_log_likelihood(codes, ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)).view(
        2, 4
    )
    assert order[:, 0].tolist() == scores.argmax(dim=1).tolist()
    best = pipe.text_to_image(
        ["a small red circle at the top", "a large star"], num_candidates=4, reranker="self", seed=3
    )
    chosen = codes.view(2, 4, 4, 4)[torch.arange(2), order[:, 0]]
    expected = pipe.decode_codes(chosen)
    got = torch.stack([torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float() / 127.5 - 1 for im in best])
    assert (got - expected.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-5


def test_pipeline_bad_input_errors(tiny_run, tmp_path):
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(tiny_run, device="cpu")
    with pytest.raises(InputError, match="prompt 1 is empty"):
        pipe.text_to_image(["a red circle", ""])
    with pytest.raises(InputError, match="the text budget is 30 tokens"):
        pipe.text_to_image(["red " * 40])
    assert len(pipe.text_to_image(["red " * 40], truncate=True)) == 1
    bad = tmp_path / "bad.png"
    bad.write_text("garbage")
    with pytest.raises(InputError, match="cannot read"):
        pipe.image_to_text([bad])
    with pytest.raises(InputError, match="2 images but 3 questions"):
        pipe.answer([np.zeros((32, 32, 3), np.uint8)] * 2, ["a?", "b?", "c?"])
    with pytest.raises(InputError, match="unknown reranker"):
        pipe.text_to_image(["a red circle"], num_candidates=2, reranker="NoSuchReranker")
    with pytest.raises(InputError, match="num_candidates"):
        pipe.text_to_image(["a red circle"], num_candidates=0)


def test_cli_generate_caption_vqa_write_files(tiny_run, tmp_path, capsys):
    from vilgkit.cli import main

    out = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                str(tiny_run),
                "a small red circle",
                "a large blue star",
                "--num-candidates",
                "2",
                "--out",
                str(out),
                "--all",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    record = json.loads((out / "generate.json").read_text())
    assert record["files"] == ["prompt_000.png", "prompt_001.png"] and record["settings"]["num_candidates"] == 2
    assert (out / "grid.png").is_file() and (out / "prompt_001_cand_01.png").is_file()
    assert Image.open(out / "prompt_000.png").size == (32, 32)

    cap_out = tmp_path / "cap"
    assert (
        main(
            ["caption", str(tiny_run), str(out / "prompt_000.png"), str(out / "prompt_001.png"), "--out", str(cap_out)]
        )
        == 0
    )
    captions = json.loads((cap_out / "captions.json").read_text())["captions"]
    assert len(captions) == 2 and (cap_out / "grid.png").is_file()

    vqa_out = tmp_path / "vqa"
    assert (
        main(
            [
                "vqa",
                str(tiny_run),
                "--image",
                str(out / "prompt_000.png"),
                "--question",
                "what colour is it?",
                "--question",
                "how many shapes?",
                "--out",
                str(vqa_out),
            ]
        )
        == 0
    )
    answers = json.loads((vqa_out / "answers.json").read_text())["answers"]
    assert [a["question"] for a in answers] == ["what colour is it?", "how many shapes?"]

    # bad input: one clear line and exit code 2, no traceback
    capsys.readouterr()
    assert main(["generate", str(tiny_run), "  ", "--out", str(tmp_path / "x")]) == 2
    assert "prompt 0 is empty" in capsys.readouterr().err
    assert main(["caption", str(tiny_run), str(tmp_path / "missing.png")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "a red circle"]) == 2
    assert "not a vilgkit run directory" in capsys.readouterr().err
