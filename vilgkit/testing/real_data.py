"""Fixtures in the layouts real data comes in, for tests, benchmarks and the real-data walkthrough.

* :func:`write_img2dataset_shards` — WebDataset tars as img2dataset writes them: ``00000.tar``
  holding ``000000000.jpg``, ``000000000.txt`` and ``000000000.json`` (``key``, ``caption``,
  ``width``, ``height``, ``status``…), JPEGs of several aspect ratios (320×240, 240×320, 300×300),
  English and Chinese captions, and planted bad samples (an undecodable JPEG, an empty caption, an
  image without its caption).
* :func:`write_bert_vocab` — a ``vocab.txt`` in bert-base-chinese's layout: ``[PAD]``, 99
  ``[unusedN]``, ``[UNK] [CLS] [SEP] [MASK]`` at 100–103, then characters, words and ``##`` pieces.
* :func:`write_taming_checkpoint` — a small VQGAN in taming-transformers' published layout
  (Lightning ``.ckpt`` + ``model.yaml``).

The pictures are Shapes scenes (coloured shapes on black) so that captions describe them truly;
nothing is downloaded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

#: the aspect ratios the fixture cycles through (width, height)
IMAGE_SIZES = ((320, 240), (240, 320), (300, 300))
#: what the planted bad samples are, by their position in the first shard
BAD_SAMPLES = {3: "undecodable_image", 7: "empty_caption", 11: "missing_caption"}


def _jpeg(pixels: Any, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).resize(size, Image.BICUBIC).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def write_img2dataset_shards(
    folder: str | Path,
    num_shards: int = 2,
    per_shard: int = 12,
    *,
    seed: int = 0,
    split: str = "train",
    languages: tuple[str, ...] = ("en", "zh"),
    bad_samples: bool = True,
) -> list[dict[str, Any]]:
    """Write ``folder/{00000..}.tar`` in img2dataset's layout; returns the good samples' records.

    Sample ``k`` (numbered across shards) is Shapes scene ``k`` of ``(seed, split)``, its caption in
    ``languages[k % len(languages)]``, its JPEG sized ``IMAGE_SIZES[k % 3]``. With ``bad_samples``,
    the first shard's samples 3, 7 and 11 are broken as :data:`BAD_SAMPLES` says (so ``3`` of the
    samples are skipped by a reader; fewer if ``per_shard`` is smaller).

    Returns:
        One ``{"key", "caption", "lang", "shard", "width", "height"}`` per readable sample, in tar order.
    """
    import webdataset as wds

    from vilgkit.data.shapes import ShapesDataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scenes = {
        lang: ShapesDataset(
            split=split,
            size=num_shards * per_shard,
            image_size=64,
            languages=[lang],
            seed=seed,
            held_out=[],
        )
        for lang in languages
    }
    kept: list[dict[str, Any]] = []
    for s in range(num_shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as tar:
            for j in range(per_shard):
                k = s * per_shard + j
                lang = languages[k % len(languages)]
                world = scenes[lang]
                caption = world.describe(k)["caption"]
                width, height = IMAGE_SIZES[k % len(IMAGE_SIZES)]
                key = f"{k:09d}"
                image = _jpeg(world.render(k), (width, height))
                bad = BAD_SAMPLES.get(j) if bad_samples and s == 0 else None
                if bad == "undecodable_image":
                    image = image[: len(image) // 3]  # a truncated JPEG: PIL fails to load it
                elif bad == "empty_caption":
                    caption = "   "
                meta = {
                    "key": key,
                    "caption": None if bad == "missing_caption" else caption,
                    "status": "success",
                    "url": f"https://example.invalid/{key}.jpg",
                    "width": width,
                    "height": height,
                    "original_width": width * 2,
                    "original_height": height * 2,
                    "error_message": None,
                }
                sample = {
                    "__key__": key,
                    "jpg": image,
                    "json": json.dumps(meta, ensure_ascii=False).encode(),
                }
                if bad != "missing_caption":
                    sample["txt"] = caption.encode("utf-8")
                tar.write(sample)
                if bad is None:
                    kept.append(
                        {
                            "key": key,
                            "caption": caption,
                            "lang": lang,
                            "shard": s,
                            "width": width,
                            "height": height,
                        }
                    )
    return kept


def write_bert_vocab(path: str | Path, texts: list[str], *, leave_out: tuple[str, ...] = ()) -> list[str]:
    """Write a bert-base-chinese-layout ``vocab.txt`` covering ``texts`` (lower-cased words, CJK
    characters one per line, punctuation) except the words in ``leave_out``; returns the tokens."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True, strip_accents=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: list[str] = []
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)):
            if word not in words and word not in leave_out:
                words.append(word)
    head = [
        "[PAD]",
        *(f"[unused{i}]" for i in range(1, 100)),
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "<S>",
        "<T>",
    ]
    pieces = [
        "##s",
        "##es",
        "##ing",
    ]  # a few continuation pieces, as every BERT vocabulary has
    tokens = head + sorted(words) + [p for p in pieces if p not in words]
    Path(path).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return tokens


def write_taming_checkpoint(
    folder: str | Path,
    *,
    downsample: int = 4,
    codebook_size: int = 64,
    seed: int = 0,
    resolution: int = 32,
) -> tuple[Path, Path]:
    """A small randomly initialised VQGAN written as taming's ``last.ckpt`` + ``model.yaml``
    (``VQModel`` kind, ``ch_mult`` giving factor ``downsample``); returns ``(checkpoint, config)``."""
    import torch

    from vilgkit_vq.taming_export import export_taming_checkpoint
    from vilgkit_vq.vqgan import VQGANTokenizer

    levels = {4: [1, 1, 1], 8: [1, 1, 1, 1]}
    if downsample not in levels:
        raise ValueError(f"downsample must be 4 or 8, got {downsample}")
    torch.manual_seed(seed)
    tok = VQGANTokenizer(
        codebook_size=codebook_size,
        code_dim=8,
        z_channels=8,
        ch=32,
        ch_mult=levels[downsample],
        num_res_blocks=1,
        attn_resolutions=[],
        resolution=resolution,
        perceptual_weight=0.0,
        disc_layers=1,
        disc_ndf=8,
    )
    return export_taming_checkpoint(tok, folder)


def tokenize_argv(recipe: str | Path, out: str | Path, *extra: str) -> list[str]:
    """``vilgkit tokenize RECIPE --out OUT EXTRA...`` (the arguments after ``vilgkit``) with the
    recipe's own tokenizers (a published vocabulary and checkpoint, no fit stage) and no progress bar."""
    from_recipe = ["--image-tokenizer-from", "recipe", "--text-tokenizer-from", "recipe"]
    return ["tokenize", str(recipe), "--out", str(out), *from_recipe, "--no-progress", *extra]
