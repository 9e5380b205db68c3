"""`vilgkit tokenize` of img2dataset shards: one finite pass (also of a repeating stream), the same
files with 1 and 2 workers, resume after a kill, and training from its shards equal to training on
the stream it was made from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import IterableDataset

from vilgkit.cli import main as cli
from vilgkit.data import write_code_shards
from vilgkit.data.code_shard_writer import UNIT_DELAY_ENV, TokenizeError
from vilgkit.testing.real_data import (
    tokenize_argv,
    write_bert_vocab,
    write_img2dataset_shards,
    write_taming_checkpoint,
)
from vilgkit.testing.tiny import CPU_STRATEGY, generator_section

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    kept = write_img2dataset_shards(root / "shards", num_shards=3, per_shard=8)
    write_bert_vocab(root / "vocab.txt", [r["caption"] for r in kept])
    ckpt, _ = write_taming_checkpoint(root / "taming")
    recipe = {
        "run_dir": str(root / "run"),
        "data": {
            "class_path": "WebDatasetReader",
            "init_args": {
                "urls": str(root / "shards"),
                "image_size": 32,
                "repeat": True,
                "shuffle_shards": False,
                "max_skip_fraction": 0.3,
            },
        },
        "text_tokenizer": {
            "class_path": "WordPieceTokenizer",
            "init_args": {"vocab_file": str(root / "vocab.txt"), "vocab_size": 512},
        },
        "image_tokenizer": {"class_path": "TamingVQGAN", "init_args": {"checkpoint": str(ckpt), "codebook_size": 64}},
        "generator": generator_section(max_text_len=48, max_image_grid=8),
        "strategy": CPU_STRATEGY,
        "stages": [{"class_path": "FitTextTokenizer"}],
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return {"root": root, "kept": kept, "recipe": path, "doc": recipe}


def _tokenize(real, out: Path, *extra: str) -> int:
    return cli(tokenize_argv(real["recipe"], out, "--batch-size", "4", *extra))


def test_a_repeating_stream_is_tokenized_once_with_any_number_of_workers(real, tmp_path):
    assert _tokenize(real, tmp_path / "one") == 0  # repeat: true in the recipe, yet it ends
    assert _tokenize(real, tmp_path / "two", "--workers", "2") == 0
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert one["num_samples"] == len(real["kept"]) == 22 and one["units"] == 3  # 24 samples, 2 planted bad
    assert one["skipped"] == {"skipped/empty_caption": 1, "skipped/undecodable_image": 1}
    assert one["shards"] == two["shards"]  # byte-identical files, whichever process wrote them
    texts = [json.loads(line)["caption"] for line in (tmp_path / "one" / "shard-00000.jsonl").read_text().splitlines()]
    assert texts == [r["caption"] for r in real["kept"] if r["shard"] == 0]  # tar order
    assert _tokenize(real, tmp_path / "one") == 2  # a finished folder is not overwritten


def test_an_endless_stream_without_shards_is_refused():
    class Endless(IterableDataset):
        repeat = True

        def __iter__(self):
            while True:
                yield {"image": torch.zeros(3, 8, 8), "caption": "x"}

    with pytest.raises(TokenizeError, match="repeats forever.*--limit"):
        write_code_shards(Endless(), None, None, "/nonexistent/never-written", progress=False)


def test_a_killed_tokenize_resumes(real, tmp_path):
    out = tmp_path / "codes"
    env = {
        **os.environ,
        UNIT_DELAY_ENV: "30",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
    }
    cmd = [sys.executable, "-m", "vilgkit", *tokenize_argv(real["recipe"], out, "--batch-size", "4")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "shard-00000.done.json").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # during the delay after unit 0: units 1 and 2 are not done
    proc.wait()
    assert not (out / "manifest.json").exists() and not (out / "shard-00001.done.json").exists()
    first = (out / "shard-00000.done.json").stat().st_mtime_ns
    assert _tokenize(real, out) == 2  # an interrupted folder needs --resume
    assert _tokenize(real, out, "--resume") == 0
    assert (out / "shard-00000.done.json").stat().st_mtime_ns == first  # unit 0 was not encoded again
    assert _tokenize(real, tmp_path / "whole") == 0
    resumed = json.loads((out / "manifest.json").read_text())
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    assert resumed["shards"] == whole["shards"] and resumed["num_samples"] == 22
    assert _tokenize(real, tmp_path / "whole2", "--limit", "5") == 0
    doc = json.loads((tmp_path / "whole2" / "manifest.json").read_text())
    assert doc["num_samples"] == 5


def test_training_on_the_shards_equals_training_on_the_stream(real, tmp_path):
    """Same order (shards in stream order, no shuffling), fp32: the same losses, across an epoch's end."""
    from vilgkit.engine.runner import run

    assert _tokenize(real, tmp_path / "codes") == 0
    losses = {}
    for name, data in (
        ("stream", real["doc"]["data"]),
        (
            "shards",
            {
                "class_path": "CodeShardDataset",
                "init_args": {"path": str(tmp_path / "codes")},
            },
        ),
    ):
        trainer = {
            "steps": 13,
            "batch_size": 2,  # divides the 22 samples: a map-style epoch drops no remainder, as a stream never does
            "lr": 0.003,
            "warmup_steps": 0,
            "log_every": 1,
        }
        doc = {
            **real["doc"],
            "run_dir": str(tmp_path / name),
            "data": data,
            "stages": [
                {"class_path": "FitTextTokenizer"},
                {
                    "class_path": "TrainGenerator",
                    "init_args": {"image_tokenizer_from": str(tmp_path / "tok"), "shuffle": False, "trainer": trainer},
                },
            ],
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        if name == "stream":
            from vilgkit.stages.train_tokenizer import save_image_tokenizer
            from vilgkit_vq.taming_ckpt import TamingVQGAN

            tok = TamingVQGAN(real["doc"]["image_tokenizer"]["init_args"]["checkpoint"])
            save_image_tokenizer(tok, tmp_path / "tok", {"init": None})
        run([str(path)])
        rows = [json.loads(x) for x in (tmp_path / name / "train_generator" / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["stream"]) == 13  # step 12 starts the second epoch
    assert losses["shards"] == pytest.approx(losses["stream"], abs=1e-6, rel=0)
