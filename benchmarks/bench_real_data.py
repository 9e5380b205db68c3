"""Real-data throughput on ``recipes/real/wds_tiny.yaml``-style data (written here, no download).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_real_data.py [--shards 8] [--per-shard 64] [--steps 30]

Prints one line per measurement:

* ``tokenize``: ``vilgkit tokenize`` images/s over the img2dataset tars with 1 and 2 workers (the
  whole command: decode, resize, encode with the taming-layout VQGAN, write the shards);
* ``loader``: the streaming loader's samples/s (``StatefulLoader`` over ``WebDatasetReader``, the
  trainer's collate) with 0 and 2 loader workers;
* ``trainer``: the samples/s ``TrainGenerator`` consumes on the wds_tiny recipe (its logged
  ``samples_per_s``), and the loader/trainer ratio — above 1 the loader is not the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "real" / "wds_tiny.yaml"


def write_fixture(root: Path, shards: int, per_shard: int) -> dict[str, Path]:
    from vilgkit.testing.real_data import write_bert_vocab, write_img2dataset_shards, write_taming_checkpoint

    kept = write_img2dataset_shards(root / "shards", num_shards=shards, per_shard=per_shard)
    write_bert_vocab(root / "vocab.txt", [r["caption"] for r in kept])
    ckpt, _ = write_taming_checkpoint(root / "taming")
    return {"shards": root / "shards", "vocab": root / "vocab.txt", "ckpt": ckpt, "samples": len(kept)}


def path_overrides(files: dict[str, Path]) -> list[str]:
    return [
        "--data.init_args.urls",
        str(files["shards"]),
        "--text_tokenizer.init_args.vocab_file",
        str(files["vocab"]),
        "--image_tokenizer.init_args.checkpoint",
        str(files["ckpt"]),
        "--stages.3.init_args.data.init_args.urls",
        str(files["shards"]),
    ]


def bench_tokenize(root: Path, files: dict[str, Path], workers: int) -> float:
    from vilgkit.cli import main
    from vilgkit.testing.real_data import tokenize_argv

    out = root / f"codes_{workers}"
    start = time.perf_counter()
    rc = main(tokenize_argv(RECIPE, out, "--workers", str(workers), *path_overrides(files)))
    seconds = time.perf_counter() - start
    assert rc == 0, "vilgkit tokenize failed"
    return json.loads((out / "manifest.json").read_text())["num_samples"] / seconds


def bench_loader(files: dict[str, Path], workers: int, batch_size: int, samples: int) -> float:
    from vilgkit.data import WebDatasetReader
    from vilgkit.engine.loader import StatefulLoader
    from vilgkit.stages.generator_training import _raw_collate

    reader = WebDatasetReader(str(files["shards"]), image_size=32, repeat=True, max_skip_fraction=0.25)
    loader = StatefulLoader(reader, batch_size, _raw_collate, num_workers=workers)
    next(loader)  # worker start-up is not throughput
    seen, start = 0, time.perf_counter()
    while seen < samples:
        seen += len(next(loader)["caption"])
    return seen / (time.perf_counter() - start)


def bench_trainer(root: Path, files: dict[str, Path], steps: int) -> float:
    from vilgkit.cli import main

    run_dir = root / "run"
    rc = main(
        [
            "run",
            str(RECIPE),
            "--run_dir",
            str(run_dir),
            "--stages",
            "fit_text_tokenizer,evaluate_tokenizer,train_generator",
            "--stages.2.init_args.trainer.steps",
            str(steps),
            "--stages.2.init_args.trainer.log_every",
            "1",
            *path_overrides(files),
        ]
    )
    assert rc == 0, "vilgkit run failed"
    rows = [json.loads(x) for x in (run_dir / "train_generator" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][2:]  # after warm-up
    return sorted(rates)[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8, help="the wds_tiny recipe's batch size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vilgkit-bench-real-") as tmp:
        root = Path(tmp)
        files = write_fixture(root, args.shards, args.per_shard)
        print(f"data: {args.shards} img2dataset tars x {args.per_shard} samples ({files['samples']} readable)")
        for workers in (1, 2):
            print(f"tokenize  workers={workers}  {bench_tokenize(root, files, workers):8.1f} images/s")
        loader = {}
        for workers in (0, 2):
            loader[workers] = bench_loader(files, workers, args.batch_size, 20 * args.batch_size)
            print(f"loader    workers={workers}  {loader[workers]:8.1f} samples/s")
        trainer = bench_trainer(root, files, args.steps)
        print(f"trainer   wds_tiny    {trainer:8.1f} samples/s consumed (median logged samples_per_s)")
        print(f"ratio     loader(0 workers) / trainer = {loader[0] / trainer:.2f}")


if __name__ == "__main__":
    main()
