"""A run directory's ``recipe.resolved.yaml`` is data: it may only name registered components.

Loading a run (``vilgkit generate RUN …``, ``Pipeline.from_run_dir``, ``vilgkit export``) validates
its recipe as ``vilgkit run`` validates one, restricted to the classes registered for each key, so a
rewritten recipe cannot make the loader build an arbitrary callable (here: ``subprocess.Popen``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vilgkit.errors import RecipeError

RESOLVED = "recipe.resolved.yaml"


def _tampered_run(tiny_run: Path, tmp_path: Path, edit) -> tuple[Path, Path]:
    """A copy of the finished tiny run whose resolved recipe ``edit(recipe, marker)`` rewrote.

    The attacker also rewrites the run's manifest (``artifacts.json``) to the new hash, so the hash
    check passes and the recipe's validation is what must refuse it.
    """
    from vilgkit.artifacts import RunDir

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    marker = tmp_path / "pwned"
    recipe = yaml.safe_load((run / RESOLVED).read_text())
    edit(recipe, marker)
    (run / RESOLVED).write_text(yaml.safe_dump(recipe, sort_keys=False))
    RunDir(run).record(run / RESOLVED)
    return run, marker


def _popen(marker: Path) -> dict:
    return {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}


def _popen_generator(recipe: dict, marker: Path) -> None:
    recipe["generator"] = _popen(marker)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vilgkit", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_generate_refuses_a_popen_generator_in_the_run_recipe(tiny_run, tmp_path):
    run, marker = _tampered_run(tiny_run, tmp_path, _popen_generator)
    res = _cli("generate", str(run), "a red circle", "--out", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr
    assert not marker.exists(), "the recipe's payload ran"
    msg = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(msg.splitlines()) == 1, msg
    assert str(run / RESOLVED) in msg and "generator.class_path" in msg and "subprocess.Popen" in msg


def test_pipeline_from_run_dir_refuses_a_popen_generator(tiny_run, tmp_path):
    from vilgkit.pipeline import Pipeline

    run, marker = _tampered_run(tiny_run, tmp_path, _popen_generator)
    with pytest.raises(RecipeError, match=r"generator\.class_path: unknown class_path 'subprocess\.Popen'"):
        Pipeline.from_run_dir(run, device="cpu")
    assert not marker.exists()


def test_nested_and_cross_registry_class_paths_are_refused(tiny_run, tmp_path):
    """A payload one level down, and a real class registered for another key, are refused alike."""
    from vilgkit.pipeline import Pipeline

    def nested(recipe, marker):
        recipe["generator"]["init_args"]["attention"] = _popen(marker)

    run, marker = _tampered_run(tiny_run, tmp_path / "a", nested)
    with pytest.raises(RecipeError, match=r"generator\.init_args\.attention\.class_path"):
        Pipeline.from_run_dir(run, device="cpu")
    assert not marker.exists()

    def dataset_as_generator(recipe, marker):
        recipe["generator"] = {"class_path": "vilgkit.data.shapes.dataset.ShapesDataset", "init_args": {}}

    run, _ = _tampered_run(tiny_run, tmp_path / "b", dataset_as_generator)
    with pytest.raises(RecipeError, match=r"not a registered class of registry 'generator'"):
        Pipeline.from_run_dir(run, device="cpu")


def test_image_tokenizer_manifest_may_only_name_a_registered_tokenizer(tiny_run, tmp_path):
    """The tokenizer stage's manifest says how to rebuild the tokenizer; it is checked the same way."""
    from vilgkit.pipeline import Pipeline

    def drop_image_tokenizer(recipe, marker):
        del recipe["image_tokenizer"]  # the loader falls back to the stage manifest's `init`

    run, marker = _tampered_run(tiny_run, tmp_path, drop_image_tokenizer)
    manifest_path = run / "train_tokenizer" / "image_tokenizer.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["init"]["class_path"].endswith("VQVAETokenizer")
    manifest["init"] = _popen(marker)
    manifest_path.write_text(json.dumps(manifest))
    from vilgkit.artifacts import RunDir

    RunDir(run).record(manifest_path)  # the attacker rewrites the run's hashes too
    with pytest.raises(RecipeError, match=rf"{manifest_path}: image_tokenizer\.class_path"):
        Pipeline.from_run_dir(run, device="cpu")
    assert not marker.exists()
