"""One writer per run directory, nothing modified before the checks pass, and damaged checkpoints
kept and reported — through ``python -m vilgkit run`` as a user hits them (issue 25).

Toy recipes (``support/vilgkit_engine_toy.py``); each ``vilgkit run`` is a subprocess on one thread,
the reference run is in this process on one thread (bit-identical results on the same machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.engine.toy_runs import assert_identical, launch, metric_steps, reference_weights, toy_recipe, weights
from vilgkit.artifacts import LOCK, MANIFEST, RunDir
from vilgkit.engine.checkpoint import FAULT_SAVE_FAIL_ENV, FAULT_SAVE_WAIT_ENV
from vilgkit.engine.checkpoint import MANIFEST as CKPT_MANIFEST
from vilgkit.engine.runner import run


def finish(proc: subprocess.Popen, code: int = 0, timeout: float = 300) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == code, f"exit {proc.returncode}\n{out}\n{err}"
    return out, err


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file's SHA-256 (the lock file aside: it is the lock, not part of the run)."""
    return {
        p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != LOCK
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_weights(tmp_path_factory.mktemp("reference"))


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the first run ended early:\n{proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_run_into_the_same_run_dir_is_refused_and_the_first_is_unharmed(tmp_path, reference):
    """The issue's case: two runs deleted each other's .tmp-step_* folders and metrics.jsonl lost lines."""
    run_dir = tmp_path / "shared"
    path = toy_recipe(tmp_path, run_dir)
    # the first run waits inside its save of step 6 (its .tmp-step_00000006 folder half written)
    # until the gate file exists
    gate = tmp_path / "gate"
    first = launch(path, env_extra={FAULT_SAVE_WAIT_ENV: f"{gate}@6"})
    _wait_for((run_dir / "train_toy" / "checkpoints" / ".tmp-step_00000006" / "trainer.json").is_file, first)
    second = [launch(path), launch(path, "--resume")]  # a fresh run and a resume alike
    for proc in second:
        _, err = finish(proc, code=2, timeout=120)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"{run_dir} is being written by another vilgkit process (pid {first.pid}" in lines[0]
    assert first.poll() is None, "the first run was meant to be still saving"
    gate.touch()
    finish(first)
    assert metric_steps(run_dir) == list(range(1, 13))  # every line, once
    assert_identical(reference, weights(run_dir))
    ckpts = run_dir / "train_toy" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000009", "step_00000012"]
    # the lock is released with the process: the run can be resumed now
    finish(launch(path, "--resume"))


@pytest.mark.slow
def test_another_recipe_into_an_existing_run_dir_changes_nothing(tmp_path):
    """The issue's case: ``vilgkit run OTHER.yaml --run_dir EXISTING`` rewrote recipe.resolved.yaml
    and fit_text_tokenizer/ before refusing, and a later --resume finished with the wrong tokenizer."""
    run_dir = tmp_path / "existing"
    original = toy_recipe(tmp_path, run_dir, steps=6, tokenizer=True)
    finish(launch(original))
    before = snapshot(run_dir)
    fingerprint = json.loads((run_dir / "fit_text_tokenizer" / "fit_summary.json").read_text())["fingerprint"]
    trained = weights(run_dir)
    other = toy_recipe(tmp_path, tmp_path / "elsewhere", name="other", steps=6, hidden=8, vocab=60, tokenizer=True)

    _, err = finish(launch(other, "--run_dir", str(run_dir)), code=2)
    assert "already has checkpoints" in err and "Traceback" not in err
    assert snapshot(run_dir) == before  # byte-identical: nothing was rewritten before refusing
    _, err = finish(launch(other, "--run_dir", str(run_dir), "--resume"), code=2)
    assert (
        "cannot resume" in err
        and "stages.train_toy.init_args.hidden: 16 -> 8" in err
        and "vocab_size: 120 -> 60" in err
    )
    assert snapshot(run_dir) == before

    finish(launch(original, "--resume"))  # the original recipe still resumes to the original result
    assert json.loads((run_dir / "fit_text_tokenizer" / "fit_summary.json").read_text())["fingerprint"] == fingerprint
    assert_identical(trained, weights(run_dir))


def _damage_keeping_the_hash(step_dir: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and rewrite its manifest entry: the hash is consistent, the file is not."""
    (step_dir / name).write_bytes(data)
    manifest = json.loads((step_dir / CKPT_MANIFEST).read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (step_dir / CKPT_MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", ["garbage_weights", "garbage_optimizer", "bad_trainer_json", "truncated", "no_manifest"]
)
def test_a_damaged_checkpoint_is_kept_reported_and_the_older_one_resumes(tmp_path, reference, damage):
    run_dir = tmp_path / "run"
    path = toy_recipe(tmp_path, run_dir)
    # the save of step 9 fails: the run stops with checkpoints 3 and 6
    finish(launch(path, env_extra={FAULT_SAVE_FAIL_ENV: "9"}), code=1)
    ckpts = run_dir / "train_toy" / "checkpoints"
    newest = ckpts / "step_00000006"
    if damage == "garbage_weights":
        _damage_keeping_the_hash(newest, "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    elif damage == "garbage_optimizer":
        _damage_keeping_the_hash(newest, "optimizers.main.pt", b"PK\x03\x04 not a zip archive")
    elif damage == "bad_trainer_json":
        _damage_keeping_the_hash(newest, "trainer.json", json.dumps({"counters": {}}).encode())  # no step
    elif damage == "truncated":
        blob = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    else:
        (newest / CKPT_MANIFEST).unlink()
    damaged = {p.relative_to(newest).as_posix(): p.read_bytes() for p in newest.rglob("*") if p.is_file()}

    out, err = finish(launch(path, "--resume"))
    assert "Traceback" not in err
    warning = [line for line in err.splitlines() if "step_00000006 is not usable" in line]
    assert len(warning) == 1, err
    expected = {
        "garbage_weights": "model.safetensors is not a safetensors file",
        "garbage_optimizer": "optimizers.main.pt is not an optimizer state",
        "bad_trainer_json": "KeyError",
        "truncated": "model.safetensors is",
        "no_manifest": "no MANIFEST.json",
    }[damage]
    assert expected in warning[0], warning[0]
    kept = ckpts / "damaged" / "step_00000006"  # moved aside, never deleted
    assert {p.relative_to(kept).as_posix(): p.read_bytes() for p in kept.rglob("*") if p.is_file()} == damaged
    assert_identical(reference, weights(run_dir))  # resumed from step 3: still the uninterrupted result
    assert metric_steps(run_dir) == list(range(1, 13))


@pytest.mark.slow
def test_no_usable_checkpoint_left_is_one_error_and_the_next_run_starts_fresh(tmp_path, reference):
    run_dir = tmp_path / "run"
    path = toy_recipe(tmp_path, run_dir)
    finish(launch(path, env_extra={FAULT_SAVE_FAIL_ENV: "6"}), code=1)  # only step 3 exists
    _damage_keeping_the_hash(run_dir / "train_toy" / "checkpoints" / "step_00000003", "model.safetensors", b"garbage!")
    _, err = finish(launch(path, "--resume"), code=2)
    assert err.strip().splitlines()[-1].startswith("vilgkit: error:") and "no usable checkpoint is left" in err
    assert "Traceback" not in err
    finish(launch(path, "--resume"))  # not stuck: the stage starts from its beginning
    assert_identical(reference, weights(run_dir))


def test_the_run_manifest_lists_what_the_run_wrote(tmp_path):
    run_dir = tmp_path / "run"
    run([str(toy_recipe(tmp_path, run_dir, steps=3))])
    files = json.loads((run_dir / MANIFEST).read_text())["files"]
    for name in (
        "recipe.resolved.yaml",
        "train_toy/model.safetensors",
        "train_toy/metrics.jsonl",
        "train_toy/summary.json",
    ):
        assert name in files, name
    assert not any(k.startswith("train_toy/checkpoints") for k in files)  # step folders have their own manifests
    assert RunDir(run_dir).verify_all() == sorted(files)
    assert RunDir(run_dir).lock()  # released when run() returned
    RunDir(run_dir).unlock()


def test_a_read_only_run_dir_is_one_error(tmp_path, capsys):
    from vilgkit.cli import main

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        path = toy_recipe(tmp_path, folder / "run", steps=3)
        assert main(["run", str(path)]) == 2
        assert "cannot write to the run directory" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)


def test_a_run_dir_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run([str(toy_recipe(tmp_path, Path("runs") / "relative", steps=3))])
    files = json.loads((tmp_path / "runs" / "relative" / MANIFEST).read_text())["files"]
    assert {"recipe.resolved.yaml", "train_toy/model.safetensors"} <= set(files)
    assert RunDir("runs/relative").verify_all() == sorted(files)
