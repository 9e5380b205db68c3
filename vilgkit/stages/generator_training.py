"""What the generator stages hand to the Trainer: tokenized data, a Trainable wrapper, sample grids.

* :func:`tokenize_dataset` turns a raw image–text data set (``image``, ``caption``, ``question``,
  ``answer``) into in-memory tensors once — codes from the frozen image tokenizer (or the ``codes``
  already in code shards) and padded ``[BOS] … [EOS]`` text ids — so training steps spend their time
  in the generator, not in the tokenizer. Over-long texts are truncated to the generator's text
  budget and counted.
* :class:`GeneratorTrainable` is the :class:`~vilgkit.interfaces.Trainable` the Trainer drives: it
  accepts either tokenized batches or raw ones (tokenizing them on the fly), trains the requested
  directions together each batch (``txt2img`` + ``img2txt`` by default, eq. 3–5) and, when the
  recipe's reconstructor is end-to-end, adds ``weight * reconstructor.loss(...)``.
* :class:`SampleGrids` is a Trainer callback writing PNG grids: images for fixed prompts and
  captions for fixed images.

Shapes (dimension key): B batch, L text length, h/w code grid, N samples in the data set.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from vilgkit.interfaces import Generator, ImageTokenizer, Reconstructor, TextTokenizer, Trainable
from vilgkit.pictures import make_grid, to_pil
from vilgkit.text_encoding import encode_texts, trim_padding

#: (batch key holding raw strings, prefix of the tokenized id/mask keys)
TEXT_FIELDS = (("caption", "text"), ("question", "question"), ("answer", "answer"))
DIRECTIONS = ("txt2img", "img2txt", "vqa")


def _raw_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep everything else as lists (the data helper's ``collate`` does the same)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def encode_codes(image_tokenizer: ImageTokenizer, images: torch.Tensor) -> torch.Tensor:
    """Images → codes with the frozen tokenizer, in fp32 (codes must not depend on autocast)."""
    device = next(image_tokenizer.parameters()).device
    was_training = image_tokenizer.training
    image_tokenizer.eval()
    with _no_autocast(device):
        codes = image_tokenizer.encode(images.to(device).float())
    image_tokenizer.train(was_training)
    return codes.long()


def tokenize_texts_batch(
    batch: dict[str, Any], text_tokenizer: TextTokenizer, max_text_len: int
) -> tuple[dict[str, torch.Tensor], int]:
    """Text fields of a batch → ``<prefix>_ids`` / ``<prefix>_mask`` (truncating, counted).

    A field comes as a raw string, or — from code shards — as ids without BOS/EOS with their
    lengths (``<field>_ids`` + ``<field>_len``), which are framed without tokenizing again.
    """
    out, truncated = {}, 0
    for raw, prefix in TEXT_FIELDS:
        if f"{raw}_len" in batch:
            ids, mask, cut = frame_ids(batch[f"{raw}_ids"], batch[f"{raw}_len"], text_tokenizer, max_text_len)
        elif raw in batch and f"{prefix}_ids" not in batch:
            ids, mask, cut = encode_texts(
                text_tokenizer, list(batch[raw]), max_text_len, truncate=True, what=raw, allow_empty=True
            )
        else:
            continue
        out[f"{prefix}_ids"], out[f"{prefix}_mask"] = ids, mask
        truncated += cut
    return out, truncated


def needs_text_tokenizing(batch: dict[str, Any]) -> bool:
    """Whether :func:`tokenize_texts_batch` has anything to do for ``batch``."""
    return any(f"{raw}_len" in batch or (raw in batch and f"{p}_ids" not in batch) for raw, p in TEXT_FIELDS)


def frame_ids(
    ids: Any, lengths: Any, text_tokenizer: TextTokenizer, max_text_len: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Padded ids without special tokens (``ids [B, W]``, real ``lengths [B]``) → ``[BOS] … [EOS]`` rows,
    exactly what :func:`~vilgkit.text_encoding.encode_texts` makes of the same texts (same truncation)."""
    ids, lengths = torch.as_tensor(ids).long(), torch.as_tensor(lengths).long()
    budget = max_text_len - 2
    keep = lengths.clamp(max=budget)
    width = int(keep.max()) + 2 if len(keep) else 2
    out = torch.full((len(ids), width), text_tokenizer.pad_id, dtype=torch.long)
    mask = torch.arange(width)[None] < (keep + 2)[:, None]
    for i, n in enumerate(keep.tolist()):
        out[i, 0], out[i, 1 : n + 1], out[i, n + 1] = text_tokenizer.bos_id, ids[i, :n], text_tokenizer.eos_id
    return out, mask, int((lengths > budget).sum())


def tokenize_dataset(
    dataset: Dataset,
    text_tokenizer: TextTokenizer,
    image_tokenizer: ImageTokenizer | None,
    *,
    max_text_len: int,
    batch_size: int = 128,
    desc: str = "tokenizing",
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Tokenize a whole map-style data set into padded tensors (``codes``, ``text_ids``...).

    Returns:
        The tensors (ids padded to ``max_text_len``) and counts ``{"samples", "truncated"}``.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the training data set is empty")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_raw_collate)
    parts: dict[str, list[torch.Tensor]] = {}
    truncated = 0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        if "codes" in batch:
            codes = torch.as_tensor(batch["codes"]).long()
        elif image_tokenizer is not None and "image" in batch:
            codes = encode_codes(image_tokenizer, batch["image"]).cpu()
        else:
            raise ValueError("samples need an 'image' (and an image tokenizer) or precomputed 'codes'")
        parts.setdefault("codes", []).append(codes)
        texts, cut = tokenize_texts_batch(batch, text_tokenizer, max_text_len)
        truncated += cut
        for key in ("text_ids", "text_mask", "question_ids", "question_mask", "answer_ids", "answer_mask"):
            value = texts.get(key, batch.get(key))
            if value is not None:
                value = torch.as_tensor(value)
                pad = max_text_len - value.shape[1]
                fill = text_tokenizer.pad_id if key.endswith("_ids") else False
                value = torch.nn.functional.pad(value, (0, pad), value=fill) if pad > 0 else value
                parts.setdefault(key, []).append(value)
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    return tensors, {"samples": len(tensors["codes"]), "truncated": truncated}


def peek_samples(dataset: Dataset, n: int) -> list[dict[str, Any]]:
    """The first ``n`` samples of a map-style or iterable data set, read without disturbing it: a
    stream is read from a copy, so its position and skip counters stay those of the training run."""
    if not isinstance(dataset, IterableDataset):
        return [dataset[i] for i in range(min(n, len(dataset)))]  # type: ignore[arg-type]
    try:
        source = copy.deepcopy(dataset)
    except Exception:  # a stream that cannot be copied (open handles): read the original's start
        source = dataset
    items = list(itertools.islice(iter(source), n))
    if not items:
        raise ValueError(f"{type(dataset).__name__} yielded no sample")
    return items


def dataset_fingerprint(dataset: Dataset, *sources: Path) -> str:
    """A cheap identity of (data set, tokenizers): length, the texts of 64 spread-out samples,
    tokenizer file hashes. (Sixty-four rather than a handful, so that a recipe change redrawing a
    share of the samples' texts, e.g. their questions, is all but certain to invalidate the cache.)"""
    h = hashlib.sha1()
    n = len(dataset)  # type: ignore[arg-type]
    h.update(f"{type(dataset).__qualname__}:{n}".encode())
    spread = sorted({n - 1, *(k * n // 64 for k in range(64))}) if n else []  # k = 0 gives the first
    for i in spread:
        item = dataset[i]
        h.update(repr({k: v for k, v in item.items() if isinstance(v, (str, int))}).encode())
    for src in sources:
        for f in sorted(p for p in Path(src).rglob("*") if p.is_file() and "checkpoint" not in str(p)):
            if f.suffix in {".json", ".txt", ".safetensors"}:
                h.update(f.name.encode())
                h.update(hashlib.sha1(f.read_bytes()).digest())
    return h.hexdigest()


class TokenizedDataset(Dataset):
    """Pre-tokenized samples kept in memory (``codes Long[N, h, w]``, ``text_ids Long[N, L]``...)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tokenized tensors disagree in length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["codes"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def sample_lengths(self) -> list[int]:
        """Real text ids per sample (caption, question and answer together): what a batch pads,
        read by ``trainer.group_by_length``."""
        masks = [v for k, v in self.tensors.items() if k.endswith("_mask")]
        if not masks:
            return [0] * len(self)
        return sum(m.sum(1) for m in masks).tolist()


def collate_tokenized(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples and drop text columns that are padding in the whole batch."""
    return _trim_text_padding({k: torch.stack([it[k] for it in items]) for k in items[0]})


def _trim_text_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop, in place, the text columns that are padding in every row of ``batch``; returns it."""
    for _, prefix in TEXT_FIELDS:
        if f"{prefix}_ids" in batch:
            batch[f"{prefix}_ids"], batch[f"{prefix}_mask"] = trim_padding(
                batch[f"{prefix}_ids"], batch[f"{prefix}_mask"]
            )
    return batch


class GeneratorTrainable(nn.Module, Trainable):
    """The generator (plus an end-to-end reconstructor, if any) as the Trainer sees it.

    Args:
        generator: the unified transformer to train.
        text_tokenizer: tokenizes raw ``caption``/``question``/``answer`` strings (raw batches only).
        image_tokenizer: frozen; encodes raw ``image`` batches to codes. Kept outside the module
            tree so that it is neither optimised nor checkpointed with the generator.
        directions: the directions trained every batch (subset of ``txt2img``, ``img2txt``, ``vqa``).
        reconstructor: trained jointly when ``reconstructor.end_to_end`` is True (ignored otherwise).
        reconstructor_weight: weight of the reconstruction loss (the paper weighs both equally).
        direction_fractions: share of each batch's rows a direction trains on (default 1 for every
            direction), e.g. ``{"img2txt": 0.5, "txt2img": 0.5}`` in a VQA stage: the rehearsed
            directions then see the first half of the rows — each loss stays a per-token mean, so
            the sum keeps its scale, and a step costs 2 rows per sample instead of 3.
        direction_weights: weight of a direction's loss in the optimised sum (default 1 each), e.g.
            ``{"vqa": 4}``. The per-token cross-entropies differ by an order of magnitude between
            directions (image codes ≈ 1.6 nats, caption words ≈ 0.1 late in training), so the plain
            sum lets the image loss set the update's direction; a weight changes the mix. The
            logged per-direction losses stay unweighted; ``loss`` is the weighted sum.
    """

    def __init__(
        self,
        generator: Generator,
        text_tokenizer: TextTokenizer | None = None,
        image_tokenizer: ImageTokenizer | None = None,
        directions: Sequence[str] = ("txt2img", "img2txt"),
        reconstructor: Reconstructor | None = None,
        reconstructor_weight: float = 1.0,
        direction_fractions: dict[str, float] | None = None,
        direction_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad or not directions:
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {list(directions)}")
        self.direction_fractions = check_direction_fractions(direction_fractions, directions)
        self.direction_weights = check_direction_weights(direction_weights, directions)
        self.generator = generator
        self.directions = list(directions)
        self.end_to_end = bool(reconstructor is not None and getattr(reconstructor, "end_to_end", False))
        self.reconstructor = reconstructor if self.end_to_end else None
        self.reconstructor_weight = reconstructor_weight
        self._text_tokenizer = text_tokenizer
        self._frozen = [image_tokenizer] if image_tokenizer is not None else []  # not a submodule
        self.truncated = 0
        if image_tokenizer is not None:
            image_tokenizer.requires_grad_(False)

    @property
    def image_tokenizer(self) -> ImageTokenizer | None:
        return self._frozen[0] if self._frozen else None

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Raw or tokenized batch → the generator's keys (codes, text/question/answer ids and masks)."""
        device = next(self.generator.parameters()).device
        out = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if "codes" not in out:
            tok = self.image_tokenizer
            if tok is None or "image" not in out:
                raise ValueError("a raw batch needs 'image' and an image tokenizer (or precomputed 'codes')")
            if next(tok.parameters()).device != device:
                tok.to(device)
            out["codes"] = encode_codes(tok, out["image"])
        if needs_text_tokenizing(batch):
            if self._text_tokenizer is None:
                raise ValueError("a raw batch with strings needs a text tokenizer")
            texts, cut = tokenize_texts_batch(batch, self._text_tokenizer, self.generator.max_text_len)
            self.truncated += cut
            out.update({k: v.to(device) for k, v in texts.items()})
        return {k: v.to(device) for k, v in out.items()}

    def generator_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Only the keys the trained directions need, plus ``directions``."""
        keys = ["codes"]
        if "txt2img" in self.directions or "img2txt" in self.directions:
            keys += ["text_ids", "text_mask"]
        if "vqa" in self.directions:
            keys += ["question_ids", "question_mask", "answer_ids", "answer_mask"]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"directions {self.directions} need batch keys {missing}")
        out = {k: batch[k] for k in keys}
        out["directions"] = list(self.directions)
        return out

    def forward(self, batch: Any, group: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        """The training pass: the named losses (the end-to-end reconstructor's loss runs its
        parameters, so the losses are this forward's outputs)."""
        batch = self.prepare(batch)
        losses: dict[str, torch.Tensor] = {}
        # Directions sharing a row count run as one generator call on the first rows of the batch.
        by_rows: dict[int, list[str]] = {}
        size = len(batch["codes"])
        for direction in self.directions:
            rows = max(1, round(size * self.direction_fractions.get(direction, 1.0)))
            by_rows.setdefault(rows, []).append(direction)
        # The end-to-end reconstructor reads the txt2img hidden states: it joins that call (or the first).
        rec_rows = next((r for r, ds in by_rows.items() if "txt2img" in ds), next(iter(by_rows)))
        for rows, directions in by_rows.items():
            part = batch if rows == size else _trim_text_padding({k: v[:rows] for k, v in batch.items()})
            gen_batch = self.generator_batch(part)
            gen_batch["directions"] = directions
            output = self.generator(gen_batch)
            total = losses.get("loss")
            losses.update(output.losses)
            # Reweight on top of the generator's own sum, so extra terms a generator adds to it stay.
            call_loss = output.losses["loss"] + sum(
                (self.direction_weights[d] - 1.0) * output.losses[d] for d in directions if d in self.direction_weights
            )
            losses["loss"] = call_loss if total is None else total + call_loss
            if self.end_to_end and rows == rec_rows:
                if "image" not in part:
                    raise ValueError("end-to-end training needs the real images in the batch")
                rec = self.reconstructor.loss(part["image"], part["codes"], output.image_hidden)
                losses["reconstruct"] = rec["loss"]
                losses["loss"] = losses["loss"] + self.reconstructor_weight * rec["loss"]
        return losses


def _check_per_direction(
    values: dict[str, float] | None, directions: Sequence[str], name: str, valid: Callable[[float], bool], rule: str
) -> dict[str, float]:
    """A ``{direction: number}`` setting: only trained directions, each value passing ``valid``."""
    values = dict(values or {})
    for direction, value in values.items():
        if direction not in directions:
            raise ValueError(f"{name} names {direction!r}, which is not trained here; choose from {list(directions)}")
        if not valid(float(value)):
            raise ValueError(f"{name}[{direction!r}] must be {rule}, got {value}")
    return {d: float(v) for d, v in values.items()}


def check_direction_fractions(fractions: dict[str, float] | None, directions: Sequence[str]) -> dict[str, float]:
    """Validate ``direction_fractions``: known, trained directions, each share in (0, 1]."""
    return _check_per_direction(fractions, directions, "direction_fractions", lambda v: 0.0 < v <= 1.0, "in (0, 1]")


def check_direction_weights(weights: dict[str, float] | None, directions: Sequence[str]) -> dict[str, float]:
    """Validate ``direction_weights``: known, trained directions, each weight finite and > 0."""
    return _check_per_direction(
        weights, directions, "direction_weights", lambda v: 0.0 < v < float("inf"), "a finite number > 0"
    )


@dataclass(eq=False, repr=False)  # holds tensors and tokenizers: identity, not value
class SampleGrids:
    """Trainer callback: every ``every`` steps, sample images for fixed prompts and caption fixed images.

    Writes ``samples/step_<step>_images.png`` (prompt under each image),
    ``samples/step_<step>_captions.png`` (generated caption under each real image) and appends the
    captions to ``samples/captions.jsonl``.
    """

    every: int
    prompts: list[str]
    images: torch.Tensor
    text_tokenizer: TextTokenizer
    image_tokenizer: ImageTokenizer
    grid: tuple[int, int]
    seed: int = 0

    def __call__(self, step: int, module: nn.Module, out_dir: Path) -> None:
        inner = getattr(module, "module", module)
        generator: Generator = inner.generator
        folder = Path(out_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        was_training = generator.training
        generator.eval()
        try:
            images, captions = self._sample(generator)
        finally:
            generator.train(was_training)
        make_grid(to_pil(images), ncol=len(self.prompts), captions=self.prompts).save(
            folder / f"step_{step:06d}_images.png"
        )
        make_grid(to_pil(self.images), ncol=len(captions), captions=captions).save(
            folder / f"step_{step:06d}_captions.png"
        )
        with open(folder / "captions.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "captions": captions}, ensure_ascii=False) + "\n")

    @torch.no_grad()
    def _sample(self, generator: Generator) -> tuple[torch.Tensor, list[str]]:
        device = next(generator.parameters()).device
        tok = self.image_tokenizer.to(device)
        ids, mask, _ = encode_texts(self.text_tokenizer, self.prompts, generator.max_text_len, truncate=True)
        rng = torch.Generator(device=device).manual_seed(self.seed)
        with _no_autocast(device):
            codes = generator.sample_images(
                ids.to(device), mask.to(device), grid=self.grid, num_candidates=1, generator=rng
            )
            images = tok.decode(codes).cpu()
            own = encode_codes(tok, self.images)
            out = generator.generate_text(own, max_length=generator.max_text_len, method="greedy")
        size = self.text_tokenizer.vocab_size  # ids past the fitted vocabulary are untrained: drop them
        return images, self.text_tokenizer.decode([[i for i in row if i < size] for row in out])
