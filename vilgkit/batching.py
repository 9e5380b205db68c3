"""Turning user input into generator batches and generator output back into pictures.

Shared by the training stages (``vilgkit.stages.train_generator``) and the inference API
(``vilgkit.pipeline``) so that a caption is tokenized the same way when a model learns it and when a
user types it:

* texts become ``[BOS] ids… [EOS]`` rows padded with ``pad_id`` plus a boolean mask (True = real);
* images (paths, PIL images, ``uint8`` arrays or ``[3, H, W]`` tensors in [-1, 1]) become one float
  tensor ``[B, 3, S, S]`` in [-1, 1], centre-cropped to a square and resized to the model's size;
* sampled images become PIL images and picture grids with optional captions.

Shapes (dimension key): B batch, L text length, S image side, H/W image height/width.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from vilgkit.errors import UnknownWordsWarning, VilgkitError
from vilgkit.interfaces import TextTokenizer


class InputError(VilgkitError):
    """Bad user input for inference (empty prompt, over-long prompt, unreadable image...)."""


# --------------------------------------------------------------------------- text


def encode_texts(
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    max_len: int,
    *,
    truncate: bool = False,
    what: str = "prompt",
    allow_empty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Tokenize ``texts`` into padded ``[BOS] … [EOS]`` rows.

    Args:
        tokenizer: a fitted text tokenizer (its ``bos_id``/``eos_id``/``pad_id`` frame the rows).
        texts: one string per row.
        max_len: the text budget of the generator, *including* BOS and EOS.
        truncate: False raises :class:`InputError` for a text longer than the budget; True keeps
            the first ``max_len - 2`` tokens (and still ends the row with EOS).
        what: the noun used in error messages (``"prompt"``, ``"question"``...).
        allow_empty: accept empty strings (training data may legitimately hold them).

    Returns:
        ``ids Long[B, L]``, ``mask Bool[B, L]`` (L = longest row) and the number of truncated texts.
    """
    if isinstance(texts, str):
        raise InputError(f"expected a list of {what}s, got a single string; wrap it in a list")
    if len(texts) == 0:
        raise InputError(f"no {what}s given")
    if max_len < 3:
        raise ValueError(f"max_len must leave room for BOS, EOS and one token, got {max_len}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what} {i} is a {type(text).__name__}, not a string")
        if not allow_empty and not text.strip():
            raise InputError(f"{what} {i} is empty; give some text (an empty prompt is not a valid input)")
    budget = max_len - 2
    rows, truncated = [], 0
    for i, ids in enumerate(tokenizer.encode(list(texts))):
        if len(ids) > budget:
            if not truncate:
                raise InputError(
                    f"{what} {i} ({_preview(texts[i])}) is {len(ids)} tokens long; the text budget is "
                    f"{budget} tokens. Shorten it or pass truncate=True (keeps the first {budget} tokens)."
                )
            ids = ids[:budget]
            truncated += 1
        rows.append([tokenizer.bos_id, *ids, tokenizer.eos_id])
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return out, mask, truncated


#: one CJK ideograph, or a run of anything else that is not a space
_WORDS = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_PUNCTUATION = ".,;:!?()[]{}\"'，。、；：！？（）《》「」"


def unknown_words(tokenizer: TextTokenizer, text: str) -> tuple[list[str], int, int]:
    """``(words that encode to [UNK], [UNK] ids in the text, ids in the text)``.

    Words are split on spaces, each CJK character being its own word (as BERT-Chinese splits them);
    surrounding punctuation is stripped from the names reported.
    """
    unk = getattr(tokenizer, "unk_id", None)
    ids = tokenizer.encode([text])[0]
    if unk is None or unk not in ids:
        return [], 0, len(ids)
    words = [w for w in _WORDS.findall(text) if w.strip(_PUNCTUATION)]
    unknown = [w.strip(_PUNCTUATION) for w, row in zip(words, tokenizer.encode(words)) if unk in row]
    return list(dict.fromkeys(unknown)), ids.count(unk), len(ids)


def warn_unknown_words(tokenizer: TextTokenizer, texts: Sequence[str], what: str = "prompt") -> None:
    """Warn (:class:`~vilgkit.errors.UnknownWordsWarning`) for each text whose ids are mostly ``[UNK]``:
    the model sees nothing of those words (e.g. Chinese on a model whose vocabulary lacks it)."""
    for i, text in enumerate(texts):
        words, n_unk, n = unknown_words(tokenizer, text)
        if n and 2 * n_unk > n:
            shown = ", ".join(repr(w) for w in words[:8]) + (" …" if len(words) > 8 else "")
            warnings.warn(
                f"{what} {i} ({_preview(text)}): {n_unk} of its {n} tokens are [UNK], words the text tokenizer does "
                f"not know: {shown}. The model ignores them; use words of its vocabulary.",
                UnknownWordsWarning,
                stacklevel=3,
            )


def _preview(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def trim_padding(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are padding in every row (saves compute on short batches)."""
    width = int(mask.sum(dim=1).max().item()) if mask.numel() else 0
    return ids[:, : max(width, 1)], mask[:, : max(width, 1)]


# --------------------------------------------------------------------------- images


ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor


def load_images(images: Sequence[ImageInput], size: int) -> torch.Tensor:
    """Read images into ``Float[B, 3, size, size]`` in [-1, 1].

    Paths are opened with PIL (an unreadable or missing file is an :class:`InputError` naming it);
    non-square images are centre-cropped to a square, then resized (bicubic) to ``size``. Arrays are
    ``H×W×3`` ``uint8``; tensors are ``[3, H, W]`` floats in [-1, 1] (used as they are when already
    ``size × size``).
    """
    if isinstance(images, (str, Path, Image.Image, np.ndarray)) or (
        isinstance(images, torch.Tensor) and images.dim() == 3
    ):
        raise InputError("expected a list of images, got a single image; wrap it in a list")
    if len(images) == 0:
        raise InputError("no images given")
    out = [_one_image(img, size, i) for i, img in enumerate(images)]
    return torch.stack(out)


def _one_image(img: ImageInput, size: int, index: int) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        if img.dim() != 3 or img.shape[0] != 3:
            raise InputError(f"image {index}: a tensor image must be [3, H, W], got {tuple(img.shape)}")
        if not torch.isfinite(img).all():
            raise InputError(f"image {index}: the tensor holds NaN or infinite values")
        if tuple(img.shape[1:]) == (size, size):
            return img.float().clamp(-1, 1)
        img = to_pil(img[None])[0]
    elif isinstance(img, (str, Path)):
        path = Path(img)
        if not path.is_file():
            raise InputError(f"image {index}: file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise InputError(f"image {index}: cannot read {path}: {err}") from None
    elif isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"image {index}: an array image must be H×W×3 uint8, got {img.shape} {img.dtype}")
        img = Image.fromarray(img)
    elif isinstance(img, Image.Image):
        img = img.convert("RGB")
    else:
        raise InputError(f"image {index}: unsupported type {type(img).__name__} (use a path, PIL image, array or tensor)")
    w, h = img.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return arr / 127.5 - 1.0


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``Float[B, 3, H, W]`` in [-1, 1] → PIL RGB images (values outside are clipped)."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


def make_grid(
    images: Sequence[Image.Image],
    ncol: int,
    captions: Sequence[str] | None = None,
    *,
    scale: int = 2,
    caption_width: int | None = None,
) -> Image.Image:
    """Lay images out in a grid (row-major), each optionally with a caption written under it.

    Args:
        images: equally sized PIL images.
        ncol: images per row.
        captions: one string per image, wrapped to the cell width.
        scale: integer up-scaling (nearest) so small images stay visible.
        caption_width: cell width in pixels for captions (default: the scaled image width, at least 160).
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    w, h = images[0].size
    w, h = w * scale, h * scale
    cell_w = max(w, caption_width or (160 if captions else w))
    font = ImageFont.load_default()
    lines_per = [_wrap(c, cell_w) for c in captions] if captions else [[] for _ in images]
    text_h = (max(len(lines) for lines in lines_per) * 12 + 4) if captions else 0
    nrow = (len(images) + ncol - 1) // ncol
    pad = 4
    grid = Image.new("RGB", (ncol * (cell_w + pad) + pad, nrow * (h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, ncol)
        x, y = pad + c * (cell_w + pad), pad + r * (h + text_h + pad)
        grid.paste(img.resize((w, h), Image.NEAREST), (x + (cell_w - w) // 2, y))
        for j, line in enumerate(lines_per[i]):
            draw.text((x, y + h + 2 + 12 * j), line, fill="black", font=font)
    return grid


def _wrap(text: str, width_px: int, char_px: int = 6) -> list[str]:
    """Greedy word wrap by an approximate character width (CJK text wraps per character)."""
    per_line = max(width_px // char_px, 4)
    words = text.split(" ") if " " in text else list(text)
    joiner = " " if " " in text else ""
    lines, cur = [], ""
    for word in words:
        cand = f"{cur}{joiner}{word}" if cur else word
        if len(cand) > per_line and cur:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines


def warn_truncated(count: int, what: str, budget: int) -> None:
    """Say (once per call) that some texts were cut to the budget."""
    if count:
        warnings.warn(f"{count} {what}(s) were longer than {budget} tokens and were truncated", stacklevel=3)
