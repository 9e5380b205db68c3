"""The data of the 10B smoke run (recipes/debug/ernievilg_10b_smoke.yaml), in the 10B recipe's own
layouts: img2dataset tars, a bert-base-chinese-layout ``vocab.txt``, a VQGAN f=8 / 8192 codes in
taming's checkpoint layout (random weights), and code shards written from the tars by
``vilgkit tokenize``.

    python -m vilgkit.testing.smoke_10b FOLDER     # prints the overrides, also FOLDER/overrides.txt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vilgkit.testing.real_data import (
    write_bert_vocab,
    write_img2dataset_shards,
    write_taming_checkpoint,
)

RECIPE = "recipes/ernievilg_10b.yaml"
SMOKE = "recipes/debug/ernievilg_10b_smoke.yaml"
IMAGE_SIZE = 64


def build_smoke_data(folder: str | Path, samples: int = 4) -> list[str]:
    """Write the smoke data into ``folder``; returns the ``vilgkit run`` overrides that use it."""
    from vilgkit.cli import main as cli

    folder = Path(folder)
    kept = write_img2dataset_shards(folder / "shards", num_shards=1, per_shard=samples, bad_samples=False)
    tokens = write_bert_vocab(folder / "vocab.txt", [r["caption"] for r in kept])
    ckpt, _ = write_taming_checkpoint(folder / "taming", downsample=8, codebook_size=8192, resolution=IMAGE_SIZE)
    # the generator's text vocabulary is the file's: ids past it could be sampled but not decoded
    tokenizers = [
        "--text_tokenizer.init_args.vocab_file",
        str(folder / "vocab.txt"),
        "--text_tokenizer.init_args.vocab_size",
        str(len(tokens)),
        "--image_tokenizer.init_args.checkpoint",
        str(ckpt),
    ]
    reader = {
        "class_path": "WebDatasetReader",
        "init_args": {"urls": str(folder / "shards"), "image_size": IMAGE_SIZE},
    }
    rc = cli(
        [
            "tokenize",
            RECIPE,
            "--config",
            SMOKE,
            *tokenizers,
            "--out",
            str(folder / "codes"),
            "--image-tokenizer-from",
            "recipe",
            "--text-tokenizer-from",
            "recipe",
            "--data",
            json.dumps(reader),
            "--no-progress",
        ]
    )
    if rc != 0:
        raise RuntimeError(f"vilgkit tokenize failed (exit {rc})")
    overrides = [*tokenizers, "--data.init_args.path", str(folder / "codes")]
    (folder / "overrides.txt").write_text(" ".join(overrides) + "\n")
    return overrides


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vilgkit.testing.smoke_10b FOLDER")
    print(" ".join(build_smoke_data(sys.argv[1])))
