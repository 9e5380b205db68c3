"""Text → generator input: ``[BOS] ids… [EOS]`` rows padded with ``pad_id`` plus a boolean mask.

Shared by the training stages (``vilgkit.stages.generator_training``) and the inference API
(``vilgkit.pipeline``) so that a caption is tokenized the same way when a model learns it and when a
user types it. Bad input is an :class:`~vilgkit.errors.InputError` naming the text.

Shapes (dimension key): B batch, L text length.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch

from vilgkit.errors import InputError, UnknownWordsWarning
from vilgkit.interfaces import TextTokenizer


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
