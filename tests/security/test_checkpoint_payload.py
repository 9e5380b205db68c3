"""A sharded checkpoint whose ``.metadata`` is a pickle calling ``os.system`` runs nothing on either
path that reads it — ``vilgkit export`` and an FSDP ``vilgkit run --resume`` — even after every
hash (DCP marker, checkpoint manifest) was rewritten to match: the hash is not the only guard."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import yaml

from vilgkit.testing.tiny import tiny_shapes_sections

from .payloads import overwrite_and_rehash, system_pickle

ROOT = Path(__file__).resolve().parents[2]

RECIPE = {
    "seed": 0,
    **tiny_shapes_sections(image_size=16, vocab_size=120, max_text_len=16),
    "strategy": {"class_path": "FSDP", "init_args": {"device": "cpu"}},
    "stages": [
        {"class_path": "FitTextTokenizer"},
        {"class_path": "TrainTokenizer", "init_args": {"trainer": {"steps": 1, "batch_size": 8}, "eval_images": 4}},
        {
            "class_path": "TrainGenerator",
            "init_args": {"trainer": {"steps": 4, "batch_size": 8, "checkpoint_every": 2}, "sample_every": 0},
        },
    ],
}

# (module, name): straight to os / posix, and the old wildcard's hole (a dotted name through a
# module that imports os)
PAYLOADS = [
    ("torch.distributed.checkpoint.metadata", "os.system"),
    ("os", "system"),
    ("posix", "system"),
]


def _vilgkit(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "vilgkit", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, Path]:
    """A one-process FSDP run whose generator stage kept a sharded checkpoint at step 2 (4 steps)."""
    tmp = tmp_path_factory.mktemp("fsdp_payload")
    recipe = tmp / "fsdp.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "run_dir": str(tmp / "run")}, sort_keys=False))
    res = _vilgkit("run", str(recipe))
    assert res.returncode == 0, res.stderr[-3000:]
    return recipe, tmp / "run"


def _poison(run: Path, module: str, name: str, marker: Path) -> Path:
    """Every kept checkpoint's ``.metadata`` → the payload, all hashes rewritten to match."""
    steps = sorted((run / "train_generator" / "checkpoints").glob("step_*"))
    assert steps, "the run kept no sharded checkpoint"
    for step in steps:
        assert (step / ".metadata").is_file()
        overwrite_and_rehash(step / ".metadata", system_pickle(module, name, f"touch {marker}"), run)
    return steps[-1]


@pytest.mark.parametrize("module,name", PAYLOADS)
def test_export_runs_no_code_from_metadata(fsdp_run, tmp_path, module, name):
    import shutil

    from vilgkit import sharded
    from vilgkit.cli import main

    run = tmp_path / "run"
    shutil.copytree(fsdp_run[1], run)
    marker = tmp_path / "pwned"
    step = _poison(run, module, name, marker)
    sharded.verify(step)  # every hash matches: the unpickler is what must refuse
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["export", str(run), "--out", str(tmp_path / "out")])
    assert not marker.exists(), "the payload ran"
    assert code == 2
    assert f"refusing to unpickle {module}.{name}" in err.getvalue()
    assert "Traceback" not in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1


def test_fsdp_resume_runs_no_code_from_metadata(fsdp_run, tmp_path):
    recipe, run = fsdp_run
    marker = tmp_path / "pwned"
    _poison(run, *PAYLOADS[0], marker)
    res = _vilgkit("run", str(recipe), "--resume")
    assert not marker.exists(), "the payload ran"
    assert res.returncode == 2, res.stderr[-3000:]
    assert "refusing to unpickle torch.distributed.checkpoint.metadata.os.system" in res.stderr
    assert "Traceback" not in res.stderr


def test_real_metadata_loads_through_the_allow_list(fsdp_run):
    """The allow-list is complete for what DCP writes (the exact list is not too tight)."""
    from vilgkit import sharded

    for step in (fsdp_run[1] / "train_generator" / "checkpoints").glob("step_*"):
        if "pwned" in (step / ".metadata").read_bytes().decode("latin-1"):
            continue  # poisoned by the resume test when it ran first
        metadata = sharded.load_metadata(step)
        assert metadata.state_dict_metadata
