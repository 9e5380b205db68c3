"""A recipe's TrainMatcher stage trains the run's image–text matcher; ``matcher`` reranks with it
everywhere a reranker is chosen (the Evaluate stage, its saved settings, Pipeline, the CLI)."""

from __future__ import annotations

import json

import pytest

from vilgkit.cli import main

pytestmark = pytest.mark.slow


def test_the_stage_writes_the_matcher_and_evaluate_reranks_with_it(matcher_run):
    stage = matcher_run / "train_matcher"
    assert (stage / "matcher.safetensors").is_file()
    record = json.loads((stage / "matcher.json").read_text())
    assert record["config"]["hidden_size"] == 16 and "loss" in record["metrics"]
    saved = json.loads((matcher_run / "inference.json").read_text())
    assert saved["reranker"] == "MatcherReranker" and saved["num_candidates"] == 3
    report = json.loads((matcher_run / "evaluate" / "eval.json").read_text())
    assert report["reranker"]["class"].endswith("MatcherReranker")


def test_pipeline_loads_the_matcher_and_the_saved_reranker_uses_it(matcher_run, monkeypatch):
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(matcher_run, device="cpu")
    assert pipe.matcher is not None
    calls = []
    real = pipe.matcher.forward
    monkeypatch.setattr(pipe.matcher, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    images = pipe.text_to_image(["a red circle"], seed=0)  # the saved settings: best of 3 by the matcher
    assert len(images) == 1 and calls


def test_generate_uses_the_matcher_by_name(matcher_run, tmp_path):
    out = tmp_path / "gen"
    args = ["generate", str(matcher_run), "a red circle", "--num-candidates", "2", "--reranker", "matcher"]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "generate.json").read_text())["settings"]["reranker"] == "matcher"


def test_matcher_on_a_run_without_one_is_a_one_line_error(tiny_run, tmp_path, capsys):
    args = ["generate", str(tiny_run), "a red circle", "--num-candidates", "2", "--reranker", "matcher"]
    assert main([*args, "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "TrainMatcher" in err


def test_a_pixel_matcher_trains_on_reconstructions_and_reranks_decoded_candidates(pixel_matcher_run, tmp_path):
    from safetensors import safe_open

    from vilgkit import Pipeline

    stage = pixel_matcher_run / "train_matcher"
    assert json.loads((stage / "matcher.json").read_text())["config"]["image_input"] == "pixels"
    with safe_open(str(stage / "tokenized.safetensors"), "pt") as cached:
        assert cached.get_slice("image").get_dtype() == "U8"  # the reconstructions, stored as uint8
    pipe = Pipeline.from_run_dir(pixel_matcher_run, device="cpu")
    assert pipe.matcher.reads_pixels
    report = json.loads((pixel_matcher_run / "evaluate" / "eval.json").read_text())
    assert report["reranker"]["class"].endswith("PixelMatcherReranker")
    args = ["generate", str(pixel_matcher_run), "a red circle", "--num-candidates", "2", "--reranker", "pixel_matcher"]
    assert main([*args, "--out", str(tmp_path / "gen"), "--device", "cpu"]) == 0
    # the codes reranker on a pixel matcher: one line, exit 2
    assert main([*args[:-1], "matcher", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
