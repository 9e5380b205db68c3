"""Run by ``torchrun --nproc-per-node 2`` from ``test_single_writer.py``: ``FitTextTokenizer`` and
``TrainGenerator``'s tokenized cache on 2 ranks (gloo), as the runner calls them. Each rank records
what it wrote and what it ended up holding in ``OUT/rank<r>.json``.

    torchrun --nproc-per-node 2 tests/parallel/single_writer_worker.py OUT
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

import vilgkit.stages.train_generator as train_generator
from vilgkit.artifacts import recorded
from vilgkit.engine.ranks import stage_barrier
from vilgkit.interfaces import RunContext
from vilgkit.stages.fit_text_tokenizer import FitTextTokenizer
from vilgkit_parallel import DDP
from vilgkit_text.wordpiece import WordPieceTokenizer

SHAPES, COLOURS = ["circle", "square", "triangle"], ["red", "green", "blue", "yellow"]


class Captions(Dataset):
    """Captions with precomputed codes (no image tokenizer needed)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> dict:
        caption = f"a {COLOURS[i % 4]} {SHAPES[i % 3]} left of a {COLOURS[(i + 1) % 4]} {SHAPES[(i + 2) % 3]}"
        return {"caption": caption, "codes": torch.full((2, 2), i % 7, dtype=torch.long)}


def main(out: Path) -> None:
    writes = {"tokenizer": 0, "tokenized": 0, "tokenize_calls": 0}
    # the atomic file write that artifacts.save_weights (the cache's writer) calls
    real_save, real_save_file = WordPieceTokenizer.save, recorded.save_file_atomic
    real_tokenize = train_generator.tokenize_dataset

    def counted_tokenize(*args, **kwargs):  # the main rank is slow too: the other must wait for its file
        writes["tokenize_calls"] += 1
        time.sleep(1.0)
        return real_tokenize(*args, **kwargs)

    def slow_save(self, directory):  # a late writer: a rank that does not wait finds no files
        writes["tokenizer"] += 1
        time.sleep(1.0)
        real_save(self, directory)

    def counted_save_file(tensors, path, *args, **kwargs):
        writes["tokenized"] += Path(path).name == train_generator.TOKENIZED_FILE
        return real_save_file(tensors, path, *args, **kwargs)

    WordPieceTokenizer.save = slow_save
    recorded.save_file_atomic = counted_save_file
    train_generator.tokenize_dataset = counted_tokenize

    data = Captions()
    ctx = RunContext(
        run_dir=out / "run",
        components={"text_tokenizer": WordPieceTokenizer(vocab_size=80), "data": data, "strategy": DDP(device="cpu")},
    )
    summary = FitTextTokenizer().run(ctx)
    stage_barrier(ctx)  # as the runner does after every stage
    tokenizer = ctx.components["text_tokenizer"]
    ctx.stage_dir("codes_only")  # stands for the image tokenizer's stage folder
    stage = train_generator.TrainGenerator(data=data, image_tokenizer_from="codes_only")
    dataset, _, stats = stage._training_data(ctx, ctx.stage_dir(stage.name), tokenizer, None, max_len=16)
    digest = hashlib.sha256()
    for key in sorted(dataset.tensors):
        digest.update(key.encode() + dataset.tensors[key].numpy().tobytes())
    again = stage._training_data(ctx, ctx.stage_dir(stage.name), tokenizer, None, max_len=16)[2]  # both hit the cache
    stage_barrier(ctx)
    rank = dist.get_rank()
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "writes": writes,
                "summary": summary,
                "vocab": tokenizer.vocab(),
                "encoded": tokenizer.encode(["a red circle"]),
                "tensors": digest.hexdigest(),
                "stats": stats,
                "again": again,
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
