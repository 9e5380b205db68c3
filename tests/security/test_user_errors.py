"""Bad input from the issue's list (and neighbours): one line naming the input and what is allowed,
exit code 2, no traceback — and ``--debug`` shows the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import assert_user_error, call_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "debug" / "gen_tiny.yaml"

GENERATE_FLAGS = [
    (["--temperature", "-1"], ["--temperature", "finite number ≥ 0"]),
    (["--temperature", "nan"], ["--temperature", "finite number ≥ 0"]),
    (["--top-k", "-5"], ["--top-k", "integer ≥ 0"]),
    (["--top-k", "100000"], ["--top-k 100000", "32 codes"]),
    (["--top-p", "0"], ["--top-p", "(0, 1]"]),
    (["--top-p", "1.5"], ["--top-p", "(0, 1]"]),
    (["--cfg-scale", "nan"], ["--cfg-scale", "finite number ≥ 0"]),
    (["--num-candidates", "0"], ["--num-candidates", "integer ≥ 1"]),
    (["--seed", "-1"], ["--seed", "[0, 2**63)"]),
    (["--device", "cuda:99"], ["--device"]),
    (["--device", "tpu"], ["--device", "auto, cpu, cuda"]),
]


@pytest.mark.parametrize("flags,needles", GENERATE_FLAGS, ids=[" ".join(f) for f, _ in GENERATE_FLAGS])
def test_generate_sampling_flags(tiny_run, tmp_path, flags, needles):
    res = call_cli(["generate", str(tiny_run), "a red circle", "--num-candidates", "1", "--out", str(tmp_path), *flags])
    assert_user_error(res, *needles)


def test_generate_top_k_zero_is_off(tiny_run, tmp_path):
    res = call_cli(
        ["generate", str(tiny_run), "a red circle", "--num-candidates", "1", "--top-k", "0", "--out", str(tmp_path)]
    )
    assert res.code == 0, res.stderr
    assert (tmp_path / "grid.png").is_file()


def test_generate_bad_text_inputs(tiny_run, tmp_path):
    binary = tmp_path / "prompts.bin"
    binary.write_bytes(b"a red circle\n\x00\xff\xfe\x80junk\n")
    assert_user_error(call_cli(["generate", str(tiny_run), "--prompts-file", str(binary)]), str(binary), "not UTF-8")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"a red circle\nblue\x00square\n")
    assert_user_error(call_cli(["generate", str(tiny_run), "--prompts-file", str(nul)]), "line 2", "NUL")
    non_utf8 = b"\xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    assert_user_error(call_cli(["generate", str(tiny_run), non_utf8]), "prompts", "not UTF-8 text")


def test_out_naming_a_file(tiny_run, tmp_path, image_file):
    file = tmp_path / "afile"
    file.write_text("keep me")
    res = call_cli(["generate", str(tiny_run), "a red circle", "--num-candidates", "1", "--out", str(file)])
    assert_user_error(res, f"--out {file}", "is a file")
    assert_user_error(call_cli(["caption", str(tiny_run), str(image_file), "--out", str(file)]), "--out", "is a file")
    assert_user_error(
        call_cli(["eval", str(tiny_run), "--out", str(file), "--metrics", "shapes"]), "--out", "is a file"
    )
    assert file.read_text() == "keep me"


def test_device_cuda_without_cuda(tiny_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = call_cli(["generate", str(tiny_run), "a red circle", "--device", "cuda"])
    assert_user_error(res, "--device", "CUDA is not available")


def test_caption_and_vqa_flags(tiny_run, image_file):
    assert_user_error(call_cli(["caption", str(tiny_run), str(image_file), "--num-beams", "0"]), "--num-beams", "≥ 1")
    assert_user_error(call_cli(["caption", str(tiny_run), str(image_file), "--max-length", "-3"]), "--max-length")
    bad = b"\xff".decode("utf-8", "surrogateescape")
    res = call_cli(["vqa", str(tiny_run), "--image", str(image_file), "--question", bad])
    assert_user_error(res, "--question", "not UTF-8")


def test_eval_clip_reranker_is_checked_before_any_work(tiny_run, tmp_path):
    import importlib.util

    out = tmp_path / "eval"
    res = call_cli(["eval", str(tiny_run), "--reranker", "clip", "--metrics", "fid", "--out", str(out)])
    needle = "needs open_clip" if importlib.util.find_spec("open_clip") is None else "--clip-weights"
    assert_user_error(res, "--reranker clip", needle)
    assert not out.exists()  # nothing was trained or written before the check
    assert not (tiny_run / "shapes_features").exists()


@pytest.mark.parametrize("name", ["clip", "ClipReranker"])
def test_generate_clip_reranker_is_checked_before_sampling(tiny_run, tmp_path, name):
    import importlib.util

    out = tmp_path / "gen"
    res = call_cli(["generate", str(tiny_run), "a red circle", "--reranker", name, "--out", str(out)])
    needle = "needs open_clip" if importlib.util.find_spec("open_clip") is None else "--clip-weights"
    assert_user_error(res, f"--reranker {name}", needle)
    assert not (out / "grid.png").exists()  # refused before any image was sampled


RECIPE_ERRORS = [
    (["--stages.9.init_args.trainer.steps", "3"], ["--stages.9.init_args.trainer.steps", "list of 4", "0..3"]),
    (["--seed", "abc"], ["command-line override --seed abc", "seed: expected an integer"]),
    (
        ["--stages.2.init_args.trainer.stepz", "3"],
        ["override --stages.2.init_args.trainer.stepz", "stages.2.init_args.trainer.stepz", "Did you mean steps?"],
    ),
    (["--stages.2.init_args.trainer.steps", "abc"], ["stages.2.init_args.trainer.steps: expected an integer"]),
    (["--stages.2.init_args.directions", "[foo]"], ["stages.2.init_args.directions", "one of 'txt2img'"]),
    (["--oops", "1"], ["command-line override --oops", "unknown top-level key 'oops'"]),
    (["--seed", "[1"], ["--seed", "not a YAML value"]),
]


@pytest.mark.parametrize("overrides,needles", RECIPE_ERRORS, ids=[" ".join(o) for o, _ in RECIPE_ERRORS])
def test_recipe_override_errors(overrides, needles):
    line = assert_user_error(call_cli(["print-config", str(RECIPE), *overrides]), *needles)
    if "override" in needles[0]:
        assert str(RECIPE) not in line  # the command line is blamed, not the recipe file


def test_recipe_file_errors(tmp_path):
    stepz = tmp_path / "stepz.yaml"
    stepz.write_text(RECIPE.read_text().replace("steps: 6,", "stepz: 6,"))
    line = assert_user_error(call_cli(["print-config", str(stepz)]), str(stepz), "stages.2.init_args.trainer.stepz")
    assert "Did you mean steps?" in line
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01seed: 1")
    assert_user_error(call_cli(["run", str(binary)]), str(binary), "not a YAML text file")
    control = tmp_path / "control.yaml"
    control.write_bytes(b"seed: \x07\n")
    assert_user_error(call_cli(["run", str(control)]), str(control), "not a YAML text file")


def test_debug_shows_the_traceback():
    with pytest.raises(Exception, match="not one of its indices"):
        call_cli(["print-config", str(RECIPE), "--stages.9.init_args.x", "1", "--debug"])


def test_read_only_and_full_disk(tiny_run, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    # /sys refuses new entries even to root (chmod does not stop root)
    res = call_cli(["run", str(RECIPE), "--run_dir", "/sys/vilgkit_test_run"])
    assert_user_error(res, "/sys/vilgkit_test_run", "not permitted")
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.png").symlink_to("/dev/full")  # every write to it fails with ENOSPC
    res = call_cli(["generate", str(tiny_run), "a red circle", "--num-candidates", "1", "--out", str(out)])
    assert_user_error(res, "no space left on the device writing", "grid.png")


def test_optimizer_state_on_a_full_disk(tmp_path):
    import torch

    from vilgkit.engine.checkpoint import save_optimizer

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    opt = torch.optim.AdamW(torch.nn.Linear(4, 4).parameters())
    path = tmp_path / "optimizer.pt"
    path.symlink_to("/dev/full")
    with pytest.raises(OSError) as err:
        save_optimizer(path, opt)
    from vilgkit.errors import os_error_line

    assert os_error_line(err.value) == f"no space left on the device writing {path}"


def test_end_to_end_reconstructor_without_txt2img(tmp_path):
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["reconstructor"] = {"class_path": "EndToEndReconstructor"}
    recipe["stages"] = [{"class_path": "FinetuneVQA", "init_args": {"generator_from": None}}]  # default directions
    path = tmp_path / "e2e_vqa.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    res = call_cli(["run", str(path), "--run_dir", str(run_dir)])
    assert_user_error(res, "'finetune_vqa'", "EndToEndReconstructor", "['vqa']", "add txt2img")
    assert not (run_dir / "finetune_vqa" / "metrics.jsonl").exists()  # stopped before training


def test_shapes_feature_extractor_trains_for_10_steps():
    from vilgkit.metrics.shapes_features import train_shapes_feature_extractor

    model, metrics = train_shapes_feature_extractor(image_size=16, steps=10, batch_size=4, bf16=False)
    assert model is not None and metrics
