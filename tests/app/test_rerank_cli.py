"""Rerankers are chosen by name on the user's paths: ``vilgkit generate/eval --reranker``, Pipeline, recipes."""

from __future__ import annotations

import json

import pytest

from vilgkit.cli import main


@pytest.mark.parametrize("name", ["pmi", "caption", "self_mean"])
def test_generate_with_a_named_reranker(tiny_run, tmp_path, capsys, name):
    out = tmp_path / name
    args = ["generate", str(tiny_run), "a red circle", "a blue square", "--num-candidates", "3", "--all"]
    assert main([*args, "--reranker", name, "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads((out / "generate.json").read_text())
    assert record["settings"]["reranker"] == name
    assert len(list(out.glob("prompt_*_cand_*.png"))) == 6 and (out / "grid.png").is_file()


def test_generate_and_eval_reject_an_unknown_reranker_in_one_line(tiny_run, tmp_path, capsys):
    for command in (["generate", str(tiny_run), "a red circle"], ["eval", str(tiny_run), "--metrics", "shapes"]):
        assert main([*command, "--reranker", "bogus", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "unknown reranker 'bogus'; use one of none, self, self_bf16, self_mean, pmi, pmi_shuffled" in err
    assert not (tmp_path / "x" / "generate.json").exists()


def test_eval_records_the_named_reranker_and_diversity(tiny_run, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", str(tiny_run), "--metrics", "shapes", "--num-samples", "2", "--num-candidates", "2"]
    assert main([*args, "--reranker", "pmi", "--out", str(out), "--examples", "0", "--device", "cpu"]) == 0
    record = json.loads((out / "eval.json").read_text())
    assert record["reranker"]["class"].endswith("PMIReranker")
    assert 0.5 <= record["metrics"]["candidate_distinct_share"] <= 1.0
    assert 0.0 <= record["metrics"]["candidate_code_difference"] <= 1.0
    assert "candidate_distinct_share" in capsys.readouterr().out


def test_pipeline_and_recipe_take_the_names(tiny_run):
    from vilgkit import Pipeline
    from vilgkit.errors import InputError
    from vilgkit.recipe import build

    pipe = Pipeline.from_run_dir(tiny_run, device="cpu")
    assert type(pipe._resolve_reranker("pmi")).__name__ == "PMIReranker"
    assert pipe._resolve_reranker("Self") == "self" and pipe._resolve_reranker("NONE") is None
    images = pipe.text_to_image(["a red circle"], num_candidates=2, reranker="caption", seed=0)
    assert len(images) == 1
    with pytest.raises(InputError, match="unknown reranker 'bogus'"):
        pipe.text_to_image(["a red circle"], num_candidates=2, reranker="bogus")
    stage = build("stages", [{"class_path": "Evaluate", "init_args": {"reranker": "pmi", "metrics": ["shapes"]}}])[0]
    assert type(stage.reranker).__name__ == "PMIReranker"
    assert stage.inference_settings().reranker == "PMIReranker"  # what the run saves, resolved again by name
    with pytest.raises(ValueError, match="unknown reranker 'nope'"):
        build("stages", [{"class_path": "Evaluate", "init_args": {"reranker": "nope"}}])
