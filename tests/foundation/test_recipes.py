"""Recipe parsing: short names, overrides, merging, links, and every kind of bad input."""

from __future__ import annotations

import json

import pytest
import yaml

from vilgkit.errors import RecipeError
from vilgkit.recipe import apply_overrides, merge

from .conftest import run_cli


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "seed: 3\n"
        "stages:\n"
        "  - class_path: EchoStage\n"
        "    init_args: {name: echo, message: ab, times: 2}\n"
    )
    return path


def _echo(tmp_path):
    return json.loads((tmp_path / "run" / "echo" / "echo.json").read_text())


def test_run_resolves_short_names_and_writes_resolved_recipe(recipe, tmp_path):
    res = run_cli(["run", str(recipe)])
    assert res.returncode == 0, res.stderr
    assert _echo(tmp_path)["text"] == "abab"
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.resolved.yaml").read_text())
    assert resolved["stages"][0]["class_path"] == "vilgkit_toy_support.EchoStage"
    assert resolved["seed"] == 3
    assert resolved["_versions"]["vilgkit"]
    again = run_cli(["run", str(tmp_path / "run" / "recipe.resolved.yaml"), "--run_dir", str(tmp_path / "again")])
    assert again.returncode == 0, again.stderr  # a run's resolved recipe reruns as written
    assert json.loads((tmp_path / "again" / "echo" / "echo.json").read_text())["text"] == "abab"


def test_dotted_override_and_config_merge(recipe, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("seed: 9\n")
    res = run_cli(["run", str(recipe), "--config", str(extra), "--stages.0.init_args.times", "3"])
    assert res.returncode == 0, res.stderr
    assert _echo(tmp_path)["text"] == "ababab"
    assert yaml.safe_load((tmp_path / "run" / "recipe.resolved.yaml").read_text())["seed"] == 9


def test_stage_subset_and_unknown_stage(recipe, tmp_path):
    assert run_cli(["run", str(recipe), "--stages", "echo"]).returncode == 0
    res = run_cli(["run", str(recipe), "--stages", "nope"])
    assert res.returncode == 2 and "unknown stage(s) nope" in res.stderr and "echo" in res.stderr


def test_unknown_class_path_names_file_key_choices_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - class_path: EchoStag\n")
    res = run_cli(["run", str(path)])
    assert res.returncode == 2
    msg = res.stderr.strip()
    assert str(path) in msg and "stages.0.class_path" in msg
    assert "EchoStage" in msg and "Did you mean EchoStage?" in msg
    assert "Traceback" not in res.stderr and len(msg.splitlines()) == 1


def test_unknown_init_arg_names_dotted_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - class_path: EchoStage\n    init_args: {tmes: 2}\n")
    res = run_cli(["run", str(path)])
    assert res.returncode == 2
    assert "stages.0.init_args.tmes" in res.stderr and "Did you mean times?" in res.stderr


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stages:\n  - class_path: EchoStage\n    init_args: {times: many}\n")
    res = run_cli(["run", str(path)])
    assert res.returncode == 2
    assert "times" in res.stderr and "int" in res.stderr and "Traceback" not in res.stderr


def test_missing_file_malformed_yaml_unknown_subcommand(tmp_path):
    res = run_cli(["run", str(tmp_path / "nope.yaml")])
    assert res.returncode == 2 and "recipe file not found" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - class_path: EchoStage\n    init_args: {times: [1, 2\n")
    res = run_cli(["run", str(bad)])
    assert res.returncode == 2 and "malformed YAML at line" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(["frobnicate"])
    assert res.returncode == 2 and "invalid choice" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(["--debug", "run", str(tmp_path / "nope.yaml")])
    assert "Traceback" in res.stderr  # --debug shows it


@pytest.mark.parametrize(
    "command", [["caption", "RUN", "x.png"], ["vqa", "RUN", "--image", "x.png", "--question", "q"]]
)
def test_commands_without_overrides_reject_extra_flags(tmp_path, command):
    # only commands with ACCEPTS_OVERRIDES = True take recipe overrides; the rest reject them before running
    res = run_cli([c.replace("RUN", str(tmp_path)) for c in command] + ["--generator.init_args.hidden_size", "8"])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"vilgkit {command[0]}: unrecognized arguments: --generator.init_args.hidden_size 8" in res.stderr


def test_unknown_top_level_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sed: 1\nstages: []\n")
    res = run_cli(["run", str(path)])
    assert res.returncode == 2 and "unknown top-level key 'sed'" in res.stderr and "Did you mean seed?" in res.stderr


def test_print_config(recipe):
    res = run_cli(["print-config", str(recipe), "--seed", "5"])
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["seed"] == 5 and cfg["stages"][0]["init_args"]["times"] == 2


def test_merge_replaces_init_args_when_class_changes():
    base = {"generator": {"class_path": "A", "init_args": {"x": 1, "y": 2}}}
    assert merge(base, {"generator": {"init_args": {"x": 5}}})["generator"]["init_args"] == {"x": 5, "y": 2}
    assert merge(base, {"generator": {"class_path": "B"}})["generator"] == {"class_path": "B"}


def test_overrides_parse_values_and_reject_garbage():
    out = apply_overrides({"a": {"b": 1}, "l": [{"x": 1}]}, ["--a.b", "2.5", "--l.0.x=[1, 2]", "--c.d", "true"])
    assert out == {"a": {"b": 2.5}, "l": [{"x": [1, 2]}], "c": {"d": True}}
    with pytest.raises(RecipeError):
        apply_overrides({}, ["oops"])
    with pytest.raises(RecipeError):
        apply_overrides({}, ["--a.b"])


def test_not_yet_landed_subcommands_say_so():
    import importlib

    from vilgkit.cli import SUBCOMMANDS

    stubs = [
        c
        for c in SUBCOMMANDS
        if "not implemented yet" in importlib.import_module(f"vilgkit.commands.{c.replace('-', '_')}").HELP
    ]
    for name in stubs:
        res = run_cli([name])
        assert res.returncode == 3 and "has not landed yet" in res.stderr


def test_constructor_rejecting_its_args_is_a_one_line_error_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "data: {class_path: ShapesDataset, init_args: {size: 8, train_question_weights: {where: 2}}}\n"
        "text_tokenizer: {class_path: WordPieceTokenizer, init_args: {vocab_size: 64}}\n"
        "stages:\n  - class_path: FitTextTokenizer\n"
    )
    res = run_cli(["run", str(path)])
    assert res.returncode == 2
    msg = res.stderr.strip()
    assert "recipe key 'data'" in msg and "ShapesDataset" in msg
    assert "['where']" in msg and "position" in msg  # the constructor's own message: the key and the choices
    assert "Traceback" not in res.stderr and len(msg.splitlines()) == 1
