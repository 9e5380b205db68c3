"""``vilgkit run --resume`` end to end: recipe compatibility checks, and runs killed with SIGKILL
(mid-training and mid-save) that resume to weights bit-identical to an uninterrupted run."""

import json
import signal
import time

import pytest

from tests.engine.toy_runs import assert_identical, launch, reference_weights, toy_recipe, weights
from vilgkit.engine.checkpoint import FAULT_SAVE_DELAY_ENV, CheckpointManager
from vilgkit.engine.compat import IncompatibleResumeError
from vilgkit.engine.runner import run


def test_resume_checks_the_recipe(tmp_path):
    path = toy_recipe(tmp_path, tmp_path / "run", steps=6)
    run([str(path)])
    with pytest.raises(IncompatibleResumeError) as err:
        run(
            [str(path)],
            [
                "--stages.0.init_args.hidden",
                "8",
                "--stages.0.init_args.trainer.lr",
                "0.1",
                "--data.init_args.size",
                "64",
                "--stages.0.init_args.trainer.log_every",
                "2",
            ],
            resume=True,
        )
    message = str(err.value)
    assert "stages.train_toy.init_args.hidden: 16 -> 8" in message
    assert "stages.train_toy.init_args.trainer.lr: 0.01 -> 0.1" in message
    assert "data.init_args.size: 96 -> 64" in message
    assert "log_every: 1 -> 2" not in message  # a safe change is not listed as a problem
    # safe changes: more steps and other logging; the run continues from step 6 to 9
    run(
        [str(path)],
        ["--stages.0.init_args.trainer.steps", "9", "--stages.0.init_args.trainer.log_every", "3"],
        resume=True,
    )
    summary = json.loads((tmp_path / "run" / "train_toy" / "summary.json").read_text())
    assert summary["step"] == 9
    lines = [json.loads(x)["step"] for x in (tmp_path / "run" / "train_toy" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [1, 2, 3, 4, 5, 6, 9]


def finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def kill_when(proc, condition, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline, "timed out waiting to kill the run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_weights(tmp_path_factory.mktemp("reference"))


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_is_bit_identical(tmp_path, reference):
    run_dir = tmp_path / "killed"
    path = toy_recipe(tmp_path, run_dir, delay=0.1)
    manager = CheckpointManager(run_dir / "train_toy" / "checkpoints", strategy=None)
    kill_when(launch(path, merge_stderr=True), lambda: (manager.latest() or (0,))[0] >= 6)
    assert manager.latest()[0] < 12  # really killed mid-run
    finish(launch(path, "--resume", merge_stderr=True))
    assert_identical(reference, weights(run_dir))


@pytest.mark.slow
def test_sigkill_during_a_save_then_resume_is_bit_identical(tmp_path, reference):
    run_dir = tmp_path / "killed_saving"
    path = toy_recipe(tmp_path, run_dir)
    ckpts = run_dir / "train_toy" / "checkpoints"
    partial = ckpts / ".tmp-step_00000006" / "trainer.json"
    # the save of step 6 sleeps between writing its files and writing its manifest: kill it there
    proc = launch(path, env_extra={FAULT_SAVE_DELAY_ENV: "60@6"}, merge_stderr=True)
    kill_when(proc, partial.is_file)
    manager = CheckpointManager(ckpts, strategy=None)
    assert [s for s, _ in manager.complete()] == [3]  # the half-written step 6 does not count
    out = finish(launch(path, "--resume", merge_stderr=True))
    assert "skipping checkpoint" not in out
    assert_identical(reference, weights(run_dir))
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())
