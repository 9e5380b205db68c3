"""A run carries its inference settings: the Evaluate stage saves them, Pipeline and the CLI default to them."""

from __future__ import annotations

import json
import shutil

import pytest

from vilgkit.errors import VilgkitError
from vilgkit.inference_settings import (
    SETTINGS_FILE,
    InferenceSettings,
    load_inference_settings,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run whose Evaluate stage ran with non-default settings (VQA only: seconds)."""
    import yaml

    from vilgkit.interfaces import RunContext
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import RERANKERS
    from vilgkit.stages.evaluate import Evaluate

    run_dir = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(tiny_run, run_dir)
    get_plugin_manager()  # rerankers are plugins
    recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    stage = Evaluate(
        metrics=["vqa"],
        num_samples=2,
        batch_size=2,
        num_candidates=3,
        top_k=2,
        cfg_scale=1.5,
        caption_method="beam",
        num_beams=2,
        reranker=RERANKERS.get("SelfReranker")(),
        device="cpu",
    )
    stage.run(RunContext(run_dir=run_dir, components={}, recipe=recipe, seed=0))
    return run_dir


def _spy(monkeypatch, obj, method):
    calls = []
    real = getattr(obj, method)

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, method, wrapper)
    return calls


def test_evaluate_stage_saves_the_settings_it_evaluated_with(evaluated_run):
    saved = json.loads((evaluated_run / SETTINGS_FILE).read_text())
    assert saved["num_candidates"] == 3 and saved["top_k"] == 2 and saved["cfg_scale"] == 1.5
    assert saved["caption_method"] == "beam" and saved["num_beams"] == 2 and saved["reranker"] == "SelfReranker"
    assert saved["evaluated_by"] == "evaluate" and (evaluated_run / saved["report"]).is_file()


def test_pipeline_defaults_to_the_runs_saved_settings_and_arguments_override(evaluated_run, tiny_run, monkeypatch):
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(evaluated_run, device="cpu")
    assert pipe.settings.saved and pipe.settings.top_k == 2
    sampled = _spy(monkeypatch, pipe.generator, "sample_images")
    decoded = _spy(monkeypatch, pipe.generator, "generate_text")
    every = pipe.text_to_image(["a red circle"], seed=1, return_all=True)
    assert len(every[0]) == 3  # three candidates, reranked
    assert sampled[-1]["num_candidates"] == 3 and sampled[-1]["top_k"] == 2 and sampled[-1]["cfg_scale"] == 1.5
    pipe.image_to_text(every[0][:1])
    assert decoded[-1]["method"] == "beam" and decoded[-1]["num_beams"] == 2

    pipe.text_to_image(["a red circle"], num_candidates=2, top_k=0, cfg_scale=1.0, reranker="none")
    assert sampled[-1]["num_candidates"] == 2 and sampled[-1]["top_k"] is None and sampled[-1]["cfg_scale"] == 1.0
    pipe.image_to_text(every[0][:1], method="greedy")
    assert decoded[-1]["method"] == "greedy"

    plain = Pipeline.from_run_dir(tiny_run, device="cpu")  # no saved settings: the old defaults
    assert not plain.settings.saved and plain.settings == InferenceSettings()


def test_cli_uses_the_saved_settings_flags_override_and_help_shows_them(evaluated_run, tmp_path, capsys):
    from vilgkit.cli import main

    def generate(out: str, *flags: str) -> dict:
        """``vilgkit generate`` of one prompt on the CPU into tmp_path/out; the settings it used."""
        assert main(["generate", str(evaluated_run), "a red circle", "--out", str(tmp_path / out), *flags]) == 0
        return json.loads((tmp_path / out / "generate.json").read_text())["settings"]

    used = generate("a", "--device", "cpu")
    assert used["num_candidates"] == 3 and used["top_k"] == 2 and used["cfg_scale"] == 1.5 and used["from_run"]
    used = generate("b", "--top-k", "0", "--num-candidates", "2", "--device", "cpu")
    assert used["num_candidates"] == 2 and used["top_k"] == 0 and used["cfg_scale"] == 1.5

    image = tmp_path / "a" / "prompt_000.png"
    assert main(["caption", str(evaluated_run), str(image), "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "captions.json").read_text())["settings"]["caption_method"] == "beam"

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(evaluated_run), "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "the run's saved setting" in shown and "top_k=2" in shown and "cfg_scale=1.5" in shown


def test_a_malformed_settings_file_is_a_one_line_error(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"top_k": 2, "shell": "rm -rf /"}))
    with pytest.raises(VilgkitError, match="unknown key"):
        load_inference_settings(tmp_path)
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"num_candidates": 0}))
    with pytest.raises(VilgkitError, match="num_candidates"):
        load_inference_settings(tmp_path)
    assert load_inference_settings(tmp_path / "missing") == InferenceSettings()
