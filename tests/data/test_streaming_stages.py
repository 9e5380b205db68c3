"""Streaming data through every stage, and published vocabularies: img2dataset tars, a BERT-layout
vocab.txt and a taming-layout checkpoint (all written here) through the stages and the CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from vilgkit.data import CodeShardDataset, WebDatasetReader, write_code_shards
from vilgkit.errors import UnknownWordsWarning, VilgkitError
from vilgkit.testing.real_data import (
    write_bert_vocab,
    write_img2dataset_shards,
    write_taming_checkpoint,
)
from vilgkit.testing.tiny import CPU_STRATEGY, generator_section
from vilgkit_text.wordpiece import WordPieceTokenizer


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    kept = write_img2dataset_shards(root / "shards", num_shards=2, per_shard=12)
    held = write_img2dataset_shards(root / "val", num_shards=1, per_shard=6, split="test", bad_samples=False)
    # every caption word of the data is in the vocabulary (Shapes never says "cat" or "猫")
    write_bert_vocab(root / "vocab.txt", [r["caption"] for r in kept + held])
    ckpt, _ = write_taming_checkpoint(root / "taming")
    return {"root": root, "kept": kept, "held": held, "ckpt": ckpt}


def _recipe(
    real,
    run_dir: Path,
    stages: list[dict],
    data: dict | None = None,
    vocab_size: int = 512,
) -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": data
        or {
            "class_path": "WebDatasetReader",
            "init_args": {
                "urls": str(real["root"] / "shards"),
                "image_size": 32,
                "repeat": True,
                "max_skip_fraction": 0.25,
            },
        },
        "text_tokenizer": {
            "class_path": "WordPieceTokenizer",
            "init_args": {
                "vocab_file": str(real["root"] / "vocab.txt"),
                "vocab_size": vocab_size,
            },
        },
        "image_tokenizer": {
            "class_path": "TamingVQGAN",
            "init_args": {"checkpoint": str(real["ckpt"]), "codebook_size": 64},
        },
        "generator": generator_section(max_text_len=48, max_image_grid=8),
        "strategy": CPU_STRATEGY,
        "stages": stages,
    }


def _run(tmp_path, doc: dict, resume: bool = False, overrides: list[str] | None = None):
    from vilgkit.engine.runner import run

    path = tmp_path / f"{Path(doc['run_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return run([str(path)], overrides or [], resume=resume)


FIT = {"class_path": "FitTextTokenizer"}
EVAL_TOK = {
    "class_path": "EvaluateTokenizer",
    "init_args": {"eval_images": 4, "num_samples": 2},
}


def _gen(steps: int, trainer: dict | None = None, **extra) -> dict:
    trainer = {
        "steps": steps,
        "batch_size": 4,
        "lr": 0.003,
        "warmup_steps": 0,
        "log_every": 1,
        "checkpoint_every": 2,
        **(trainer or {}),
    }
    return {
        "class_path": "TrainGenerator",
        "init_args": {
            "image_tokenizer_from": "evaluate_tokenizer",
            "trainer": trainer,
            **extra,
        },
    }


def _losses(stage_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_fit_stage_keeps_a_given_vocab_file(real, tmp_path, capsys):
    ctx = _run(tmp_path, _recipe(real, tmp_path / "run", [FIT]))
    tok = ctx.components["text_tokenizer"]
    assert tok.vocab() == (real["root"] / "vocab.txt").read_text(encoding="utf-8").splitlines()  # not re-fitted
    assert "used as it is, not fitted" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "fit_text_tokenizer" / "fit_summary.json").read_text())
    assert summary["fitted"] is False and summary["vocab_size"] == len(tok.vocab())
    # BERT's specials found by name in bert-base-chinese's layout; Chinese split per character
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.sep_id, tok.mask_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    assert tok.eos_id == tok.sep_id
    assert tok.tokenize(["左上角有一个红色圆形"]) == [list("左上角有一个红色圆形")]


def test_text_budget_is_checked_against_the_vocabulary(real):
    with pytest.raises(ValueError, match="raise vocab_size"):
        WordPieceTokenizer(vocab_size=100, vocab_file=str(real["root"] / "vocab.txt"))
    from vilgkit.stages.train_generator import check_special_ids
    from vilgkit.testing.tiny import tiny_generator

    tok = WordPieceTokenizer(vocab_size=512, vocab_file=str(real["root"] / "vocab.txt"))
    small = tiny_generator(seed=None, text_vocab_size=150, image_vocab_size=64, num_layers=1)
    with pytest.raises(VilgkitError, match="at least 180"):  # the generator's text vocabulary is too small
        check_special_ids(small, tok)


def test_generator_stages_and_evaluation_read_a_webdataset_stream(real, tmp_path):
    stages = [
        FIT,
        EVAL_TOK,
        _gen(7, trainer={"num_workers": 2}),  # 7 batches of 4 > the 21 good samples: crosses an epoch
        {
            "class_path": "FinetuneVQA",
            "init_args": {
                "image_tokenizer_from": "evaluate_tokenizer",
                "directions": ["img2txt"],
                "trainer": {
                    "steps": 2,
                    "batch_size": 4,
                    "lr": 0.001,
                    "warmup_steps": 0,
                    "log_every": 1,
                },
            },
        },
    ]
    ctx = _run(tmp_path, _recipe(real, tmp_path / "run", stages))
    run_dir = tmp_path / "run"
    assert sorted(_losses(run_dir / "train_generator")) == list(range(1, 8))
    manifest = json.loads((run_dir / "train_generator" / "generator.json").read_text())
    assert manifest["data"]["streamed"] is True and manifest["grid"] == [8, 8]
    assert sorted(_losses(run_dir / "finetune_vqa")) == [1, 2]
    # the BERT ids were taken from the tokenizer, not from the generator's defaults (0 / 2 / 3)
    generator = ctx.components["generator"]
    assert (generator.pad_id, generator.bos_id, generator.eos_id) == (0, 101, 102)
    # evaluation reads the first samples of a stream (no len()), in batches, once
    from vilgkit.metrics.harness import _batches

    val = WebDatasetReader(str(real["root"] / "val"), image_size=32, repeat=True)
    sizes = [len(b) for b in _batches(val, 5, 2)]
    assert sizes == [2, 2, 1]
    assert [len(b) for b in _batches(val, 50, 4)][-1] <= 4 and sum(len(b) for b in _batches(val, 50, 4)) == 50


def test_resume_on_a_stream_is_exact(real, tmp_path):
    """Eight steps in one go, against the same run resumed from its step-4 checkpoint: steps 5–8
    cross the end of the stream's first epoch (21 good samples, batches of 4) and give the same losses."""
    import shutil

    stages = [
        FIT,
        EVAL_TOK,
        _gen(8, trainer={"checkpoint_every": 4, "keep_checkpoints": 2}),
    ]
    _run(tmp_path, _recipe(real, tmp_path / "straight", stages))
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    stage = tmp_path / "resumed" / "train_generator"
    shutil.rmtree(stage / "checkpoints" / "step_00000008")
    metrics = stage / "metrics.jsonl"
    metrics.write_text(
        "".join(line for line in metrics.read_text().splitlines(keepends=True) if json.loads(line).get("step", 0) <= 4)
    )
    doc = _recipe(real, tmp_path / "resumed", stages)
    _run(tmp_path, doc, resume=True)
    a, b = _losses(tmp_path / "straight" / "train_generator"), _losses(stage)
    assert sorted(b) == list(range(1, 9))
    assert [b[s] for s in range(5, 9)] == [a[s] for s in range(5, 9)]


def test_code_shards_of_caption_only_data_train_the_generator(real, tmp_path):
    """Caption-only shards need no VQA fields; their ids are framed as on-the-fly tokenizing frames them."""
    from vilgkit.stages.generator_training import _raw_collate, tokenize_texts_batch
    from vilgkit.stages.train_tokenizer import save_image_tokenizer
    from vilgkit.text_encoding import encode_texts
    from vilgkit_vq.taming_ckpt import TamingVQGAN

    tok = WordPieceTokenizer(vocab_size=512, vocab_file=str(real["root"] / "vocab.txt"))
    image_tok = TamingVQGAN(str(real["ckpt"]))
    reader = WebDatasetReader(str(real["root"] / "shards"), image_size=32, max_skip_fraction=0.25)
    write_code_shards(reader, image_tok, tok, tmp_path / "codes", shard_size=8, progress=False)
    shards = CodeShardDataset(str(tmp_path / "codes"))
    assert len(shards) == len(real["kept"])
    batch = _raw_collate([shards[i] for i in range(5)])
    framed, _ = tokenize_texts_batch(batch, tok, 12)  # 12: some captions are cut, as on the fly
    for raw, prefix in (
        ("caption", "text"),
        ("question", "question"),
        ("answer", "answer"),
    ):
        ids, mask, _ = encode_texts(tok, batch[raw], 12, truncate=True, allow_empty=True)
        assert torch.equal(framed[f"{prefix}_ids"], ids) and torch.equal(framed[f"{prefix}_mask"], mask)
    data = {
        "class_path": "CodeShardDataset",
        "init_args": {"path": str(tmp_path / "codes")},
    }
    save_image_tokenizer(image_tok, tmp_path / "tok", {"init": None})
    for precompute in (True, False):
        run_dir = tmp_path / f"run_{precompute}"
        stages = [
            FIT,
            _gen(2, image_tokenizer_from=str(tmp_path / "tok"), precompute=precompute),
        ]
        _run(tmp_path, _recipe(real, run_dir, stages, data=data))
        assert sorted(_losses(run_dir / "train_generator")) == [1, 2]


def test_mostly_unknown_prompts_warn_naming_the_words(real):
    tok = WordPieceTokenizer(vocab_size=512, vocab_file=str(real["root"] / "vocab.txt"))
    from vilgkit.text_encoding import unknown_words, warn_unknown_words

    assert unknown_words(tok, "a red circle") == ([], 0, 3)
    with pytest.warns(UnknownWordsWarning, match=r"'blorp', 'zonk'.*") as record:
        warn_unknown_words(tok, ["a red circle", "blorp zonk circle"])
    assert len(record) == 1 and "prompt 1" in str(record[0].message)
    with pytest.warns(UnknownWordsWarning, match="'猫'"):
        warn_unknown_words(tok, ["猫猫猫"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unknown_words(tok, ["a red blorp circle"])  # one unknown word in four: no warning


def test_taming_config_is_found_in_the_published_layout(real, tmp_path):
    from vilgkit_vq.taming_ckpt import find_taming_config

    assert find_taming_config(real["ckpt"]) == real["ckpt"].parent / "model.yaml"
    logs = tmp_path / "logs" / "2020-11-09T13-31-51_faceshq_vqgan"
    (logs / "checkpoints").mkdir(parents=True)
    (logs / "configs").mkdir()
    (logs / "configs" / "2020-11-09T13-31-51-project.yaml").write_text("model: {}\n")
    assert find_taming_config(logs / "checkpoints" / "last.ckpt").name.endswith("-project.yaml")
    with pytest.raises(FileNotFoundError, match="give `config:`"):
        find_taming_config(tmp_path / "elsewhere" / "last.ckpt")


def test_published_tokenizers_need_no_stage(real, tmp_path):
    """`*_tokenizer_from: recipe`: the vocab_file and the taming checkpoint as the recipe builds them,
    no fit or tokenizer stage; the run loads for inference from the same recipe."""
    from vilgkit import Pipeline

    gen = _gen(2, text_tokenizer_from="recipe", image_tokenizer_from="recipe")
    _run(tmp_path, _recipe(real, tmp_path / "run", [gen]))
    manifest = json.loads((tmp_path / "run" / "train_generator" / "generator.json").read_text())
    assert manifest["text_tokenizer"] == manifest["image_tokenizer"] == "recipe"
    pipe = Pipeline.from_run_dir(tmp_path / "run", device="cpu")
    assert pipe.generator.bos_id == 101 and pipe.text_tokenizer.vocab_size == 180
    (image,) = pipe.text_to_image(["a small red circle"], seed=0)
    assert image.size == (32, 32)
    # the generator's 512 text ids exceed the vocabulary's 180: evaluation decodes as inference does
    from vilgkit.data import collate
    from vilgkit.metrics.harness import SamplingSettings, _Examples, _image_to_text

    batch = collate(peek := [s for _, s in zip(range(4), WebDatasetReader(str(real["root"] / "val"), image_size=32))])
    timing = {"caption_s": 0.0}
    out = _image_to_text(pipe, batch, SamplingSettings(), 0, timing, _Examples(0))
    assert len(out["predictions"]) == len(peek) == 4
    doc = _recipe(real, tmp_path / "unfitted", [gen])
    doc["text_tokenizer"]["init_args"] = {"vocab_size": 512}  # no vocab_file: it would need fitting
    with pytest.raises(VilgkitError, match="FitTextTokenizer"):
        _run(tmp_path, doc)


def test_more_loader_workers_than_shards_is_refused(real):
    from torch.utils.data import DataLoader

    reader = WebDatasetReader(str(real["root"] / "shards"), image_size=32, max_skip_fraction=0.25)
    with pytest.raises(ValueError, match="use at most 2 workers or more shards"):
        next(iter(DataLoader(reader, batch_size=2, num_workers=3)))


def test_train_tokenizer_reads_a_stream(real, tmp_path):
    vq = pytest.importorskip("vilgkit_vq")
    doc = _recipe(
        real,
        tmp_path / "run",
        [
            {
                "class_path": "TrainTokenizer",
                "init_args": {
                    "trainer": {"steps": 3, "batch_size": 4, "lr": 0.001, "warmup_steps": 0, "log_every": 1},
                    "eval_images": 4,
                },
            }
        ],
    )
    doc["image_tokenizer"] = {"class_path": "VQVAETokenizer", "init_args": vq.VQVAETokenizer.conformance_args()}
    _run(tmp_path, doc)
    assert sorted(_losses(tmp_path / "run" / "train_tokenizer")) == [1, 2, 3]
    assert (tmp_path / "run" / "train_tokenizer" / "image_tokenizer.safetensors").is_file()


def test_the_loader_places_a_stream_at_its_rank(real):
    """A reader built before the process group exists (rank 0 of 1) reads the loader's rank's shards."""
    from vilgkit.engine.loader import StatefulLoader
    from vilgkit.stages.generator_training import _raw_collate

    def keys(rank: int) -> set[str]:
        reader = WebDatasetReader(str(real["root"] / "shards"), image_size=32, max_skip_fraction=0.25, repeat=False)
        loader = StatefulLoader(reader, 3, _raw_collate, rank=rank, world_size=2, drop_last=False)
        assert reader.world_size == 2 and reader.rank == rank
        return {k for _ in range(3) for k in next(loader)["key"]}

    a, b = keys(0), keys(1)
    assert a and b and not a & b  # disjoint shards
    fixed = WebDatasetReader(str(real["root"] / "shards"), image_size=32, rank=0, world_size=1)
    fixed.set_placement(1, 2)  # given at construction: kept
    assert (fixed.rank, fixed.world_size) == (0, 1)
