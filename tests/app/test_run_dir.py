"""A finished run directory as the inference commands load it: every file hashed in one manifest
and verified on load (``vilgkit generate RUN``, ``vilgkit eval RUN``, ``Pipeline.from_run_dir``),
a clear one-line error naming a file that changed or cannot be read, and runs that keep loading
after the external files they were built from (a taming checkpoint, a BERT vocab.txt) move."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from vilgkit.artifacts import MANIFEST, ArtifactError, RunDir
from vilgkit.testing.tiny import CPU_STRATEGY, generator_section

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the shared debug run that a test may damage."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", ".vilgkit.lock"))
    manifest = json.loads((dst / MANIFEST).read_text())  # the copy drops the logs: drop their entries too
    manifest["files"] = {k: v for k, v in manifest["files"].items() if (dst / k).is_file()}
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from vilgkit.cli import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_every_file_the_run_wrote_is_in_the_manifest(tiny_run):
    files = json.loads((tiny_run / MANIFEST).read_text())["files"]
    on_disk = sorted(
        p.relative_to(tiny_run).as_posix()
        for p in tiny_run.rglob("*")
        if p.is_file() and "checkpoints" not in p.parts and not p.name.startswith(".") and p.name != MANIFEST
    )
    assert sorted(files) == on_disk
    for name in (
        "recipe.resolved.yaml",
        "fit_text_tokenizer/vocab.txt",
        "train_tokenizer/image_tokenizer.safetensors",
        "train_generator/generator.safetensors",
        "finetune_vqa/generator.json",
        "finetune_vqa/generator.safetensors",
        "train_generator/tokenized.safetensors",
        "train_generator/metrics.jsonl",
    ):
        assert name in files, name
        assert files[name]["sha256"] == hashlib.sha256((tiny_run / name).read_bytes()).hexdigest()
    # a generator stage writes its weights once: its split files, not also the trainer's model.safetensors
    assert not [
        n for n in files if n.endswith("/model.safetensors") and n.split("/")[0] in ("train_generator", "finetune_vqa")
    ]
    assert RunDir(tiny_run).verify_all()


def _flip(path: Path, at: int = -1) -> None:
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "name",
    [
        "finetune_vqa/generator.safetensors",
        "train_tokenizer/image_tokenizer.safetensors",
        "fit_text_tokenizer/tokenizer.json",
        "recipe.resolved.yaml",
        "finetune_vqa/generator.json",
    ],
)
def test_a_bit_flip_is_refused_by_generate_naming_the_file(run_copy, capsys, name):
    _flip(run_copy / name, at=-2)
    code, err = _cli(capsys, "generate", str(run_copy), "a small red circle", "--device", "cpu")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"vilgkit: error: {run_copy / name} does not match its SHA-256 in "
        f"{run_copy / MANIFEST} (changed or corrupted after it was written)"
    ]


def test_a_truncated_file_is_refused_by_eval_and_the_pipeline(run_copy, capsys, tmp_path):
    from vilgkit import Pipeline

    path = run_copy / "train_generator" / "generator.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="generator.safetensors is 1000 bytes but"):
        Pipeline.from_run_dir(run_copy, stage="train_generator", device="cpu")
    code, err = _cli(
        capsys,
        "eval",
        str(run_copy),
        "--stage",
        "train_generator",
        "--metrics",
        "caption",
        "--num-samples",
        "2",
        "--out",
        str(tmp_path / "eval"),
        "--device",
        "cpu",
    )
    assert code == 2 and "generator.safetensors is 1000 bytes" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "name,garbage,expected",
    [
        (
            "finetune_vqa/generator.safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}..",
            "is not a safetensors file",
        ),
        ("finetune_vqa/generator.json", b'{"grid": [4, 4]}', "has no 'text_tokenizer'"),
        ("finetune_vqa/generator.json", b"\xff\xfe not text", "is not a JSON file"),
        ("train_tokenizer/image_tokenizer.json", b"[1, 2", "is not a JSON file"),
        ("fit_text_tokenizer/tokenizer.json", b"{}", "is not a saved text tokenizer"),
    ],
)
def test_invalid_files_with_a_consistent_hash_are_one_error(run_copy, capsys, name, garbage, expected):
    """Files whose manifest entry was rewritten to match (the hash is consistent, the content is not
    what vilgkit writes): one line naming the file, not a SafetensorError/KeyError traceback."""
    (run_copy / name).write_bytes(garbage)
    RunDir(run_copy).record(name)
    code, err = _cli(capsys, "generate", str(run_copy), "a small red circle", "--device", "cpu")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(run_copy / name.split("/")[0]) in err and expected in err, err


def test_a_run_without_manifest_loads_with_a_warning(run_copy, capsys):
    from vilgkit import Pipeline

    (run_copy / MANIFEST).unlink()
    capsys.readouterr()
    pipe = Pipeline.from_run_dir(run_copy, device="cpu")
    assert pipe.stage_dir.name == "finetune_vqa"
    assert f"{run_copy} has no {MANIFEST}: its files cannot be verified" in capsys.readouterr().err


def test_eval_into_the_run_takes_its_lock(run_copy, capsys):
    run = RunDir(run_copy)
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from vilgkit.artifacts import RunDir; "
            f"RunDir({str(run_copy)!r}).lock('test'); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _cli(capsys, "eval", str(run_copy), "--metrics", "caption", "--num-samples", "2", "--device", "cpu")
        assert code == 2 and f"{run_copy} is being written by another vilgkit process (pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert run.lock()  # free again
    run.unlock()


# ------------------------------------------------------------------ self-contained runs


def _taming_files(folder: Path) -> tuple[Path, Path]:
    """A tiny VQGAN published in taming's layout (Lightning .ckpt + model.yaml)."""
    import torch

    from vilgkit_vq.taming_export import export_taming_checkpoint
    from vilgkit_vq.vqgan import VQGANTokenizer

    torch.manual_seed(0)
    return export_taming_checkpoint(VQGANTokenizer(**VQGANTokenizer.conformance_args()), folder)


def test_external_files_are_copied_in_and_the_run_loads_after_they_move(tmp_path, capsys):
    """A run built on a published taming checkpoint and a BERT vocab.txt keeps working (Pipeline,
    ``vilgkit generate``) once the originals are gone: the run holds hashed copies of them."""
    import numpy as np

    from vilgkit import Pipeline
    from vilgkit.engine.runner import run

    originals = tmp_path / "downloads"
    ckpt, cfg = _taming_files(originals / "taming")
    vocab = originals / "bert" / "vocab.txt"
    vocab.parent.mkdir(parents=True)
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]", "a", "red", "circle", "square"]) + "\n"
    )
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "data": {
            "class_path": "ShapesDataset",
            "init_args": {"size": 16, "image_size": 16, "max_objects": 1, "held_out": []},
        },
        "text_tokenizer": {
            "class_path": "WordPieceTokenizer",
            "init_args": {"vocab_size": 64, "vocab_file": str(vocab)},
        },
        "image_tokenizer": {
            "class_path": "TamingVQGAN",
            "init_args": {"checkpoint": str(ckpt), "config": str(cfg), "codebook_size": 16},
        },
        "generator": generator_section(max_text_len=24, max_image_grid=4, hidden_size=16),
        "strategy": CPU_STRATEGY,
        "stages": [
            {"class_path": "FitTextTokenizer"},
            {"class_path": "EvaluateTokenizer", "init_args": {"eval_images": 4, "num_samples": 2}},
            {
                "class_path": "TrainGenerator",
                "init_args": {
                    "image_tokenizer_from": "evaluate_tokenizer",
                    "trainer": {"steps": 2, "batch_size": 4, "log_every": 1},
                },
            },
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run([str(path)])
    run_dir = tmp_path / "run"
    external = json.loads((run_dir / MANIFEST).read_text())["external"]
    assert set(external) == {
        "image_tokenizer.init_args.checkpoint",
        "image_tokenizer.init_args.config",
        "text_tokenizer.init_args.vocab_file",
    }
    for entry in external.values():
        copy = run_dir / entry["file"]
        assert copy.is_file() and entry["file"].startswith("external/")
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == entry["sha256"]
        assert entry["file"] in json.loads((run_dir / MANIFEST).read_text())["files"]
    # the resolved recipe keeps the user's paths (what a resume compares)
    assert yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())["image_tokenizer"]["init_args"][
        "checkpoint"
    ] == str(ckpt)
    before = Pipeline.from_run_dir(run_dir, device="cpu").text_to_image(["a red circle"], seed=1)

    shutil.move(str(originals), str(tmp_path / "moved"))  # the originals are gone
    pipe = Pipeline.from_run_dir(run_dir, device="cpu")
    after = pipe.text_to_image(["a red circle"], seed=1)
    assert np.array_equal(np.asarray(before[0]), np.asarray(after[0]))
    code, err = _cli(
        capsys, "generate", str(run_dir), "a red circle", "--out", str(tmp_path / "gen"), "--device", "cpu"
    )
    assert code == 0, err
    assert (tmp_path / "gen" / "prompt_000.png").is_file()

    # the copies are verified like every other file of the run
    copy = run_dir / external["image_tokenizer.init_args.config"]["file"]
    copy.write_text(copy.read_text() + "\n# edited\n")
    code, err = _cli(
        capsys, "generate", str(run_dir), "a red circle", "--out", str(tmp_path / "gen2"), "--device", "cpu"
    )
    assert code == 2 and f"{copy} is" in err and "Traceback" not in err
