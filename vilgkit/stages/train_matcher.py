"""``TrainMatcher``: train the image–text matching model that reranks best-of-N candidates.

The stage loads the run's text and image tokenizers (as the generator stages do), tokenizes its data
once (cached in the stage folder), and trains :class:`vilgkit.models.matcher.ImageTextMatcher`
through the Trainer, so it resumes, logs and checkpoints like every training stage. It writes
``matcher.safetensors`` and ``matcher.json`` into its folder; :class:`vilgkit.Pipeline` loads them
with the run, and ``MatcherReranker`` (short name ``matcher``) scores candidates with them.

What it learns is a ranking, the task reranking poses: for a text, which of several images it
describes; for an image, which of several texts. Both lists are soft-maxed (InfoNCE) over the
true pair and *hard* negatives, because the candidates of one prompt differ in little:

* images of the batch whose captions share the most words with the text (bag-of-ids cosine);
* the text with one id replaced by the id at the same position of the nearest other caption (an
  attribute swapped for another of its kind, when captions share a template) and the text with two
  of its ids exchanged (which attribute goes with which object). Negatives equal to the true text
  are masked out;
* with ``patch_negatives``, the true image itself with a small block of another image's *object*
  codes pasted at a random place (:func:`pasted_codes`): a stray blob on the background or one
  object overdrawn, the two ways sampled candidates fail (docs/performance.md, "Why candidates
  fail"), which negatives drawn from other scenes never show.

Nothing here knows the Shapes world: the negatives come from the captions' ids and the image codes
alone (an image's most frequent code is taken as its background).

With ``image_input: pixels`` the matcher reads images, and it trains on the image tokenizer's
*reconstructions* of the training images (encode → decode), not the originals: the candidates it
will rank are decoder renderings, so it learns to read that rendering.

Dimension key: B batch, K image negatives, J text negatives, L text length, h/w code grid, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vilgkit import artifacts
from vilgkit.engine.config import TrainerConfig
from vilgkit.interfaces import RunContext, Stage, Trainable
from vilgkit.models.matcher import IMAGE_INPUTS, PIXEL_STRIDE, ImageTextMatcher, code_table_of
from vilgkit.registry import STAGES
from vilgkit.stages.generator_training import (
    TokenizedDataset,
    collate_tokenized,
    tokenize_dataset,
)
from vilgkit.stages.train_generator import _load_cached, load_tokenizers, tokenized_fingerprint


class MatcherTrainable(nn.Module, Trainable):
    """The matcher and its ranking loss as the Trainer sees them.

    Args:
        matcher: the model trained.
        image_negatives: K, the hard negative images per text.
        swap_negatives: include the two rewritten texts as negatives per image (else only other captions).
        text_negatives: other captions of the batch per image, nearest first.
        patch_negatives: pasted-code versions of the true image per text (:func:`pasted_codes`).
        decode: codes ``[N, h, w]`` → the pixels a pixels matcher reads, made exactly as its
            training images were (required for a pixels matcher with ``patch_negatives``).
    """

    def __init__(
        self,
        matcher: ImageTextMatcher,
        image_negatives: int = 5,
        text_negatives: int = 2,
        swap_negatives: bool = True,
        patch_negatives: int = 0,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if patch_negatives and matcher.image_input == "pixels" and decode is None:
            raise ValueError("a pixels matcher with patch_negatives needs decode (codes → its training pixels)")
        self.matcher = matcher
        self.image_negatives, self.text_negatives, self.swap_negatives = image_negatives, text_negatives, swap_negatives
        self.patch_negatives = patch_negatives
        self._decode = decode  # a plain callable, not a submodule: the tokenizer is neither trained nor saved

    def forward(self, batch: dict[str, torch.Tensor], group: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        device = next(self.matcher.parameters()).device
        image_key = "image" if self.matcher.image_input == "pixels" else "codes"
        codes, ids, mask = (batch[k].to(device) for k in (image_key, "text_ids", "text_mask"))
        size = len(codes)
        similar = caption_similarity(ids, mask, self.matcher.text_vocab_size)  # [B, B], -inf: never a negative
        tokens = self.matcher.image_tokens(codes)  # once per image: every list below indexes them
        true = self.matcher.score(ids, mask, tokens)[:, None]  # [B, 1]: the true pair opens both lists
        losses: dict[str, torch.Tensor] = {}
        image_scores, image_valid = [true], [torch.ones_like(true, dtype=torch.bool)]
        k = min(self.image_negatives, size - 1)
        if k > 0:
            nearest = similar.topk(k, dim=1)
            scores = self.matcher.score(
                ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), tokens[nearest.indices.flatten()]
            )
            image_scores.append(scores.view(size, k))
            image_valid.append(nearest.values > -1e30)
        if self.patch_negatives > 0 and size > 1:
            scores, valid = self.patched_scores(batch["codes"].to(device), ids, mask)
            image_scores.append(scores)
            image_valid.append(valid)
        if len(image_scores) > 1:
            losses["image_choice"] = listwise_loss(torch.cat(image_scores, dim=1), torch.cat(image_valid, dim=1))
        texts, texts_mask, valid = self.negative_texts(ids, mask, similar)  # [B, J, L]
        j = texts.shape[1]
        if j > 0 and bool(valid.any()):
            scores = self.matcher.score(texts.flatten(0, 1), texts_mask.flatten(0, 1), tokens.repeat_interleave(j, 0))
            valid = torch.cat([torch.ones_like(true, dtype=torch.bool), valid], dim=1)
            losses["text_choice"] = listwise_loss(torch.cat([true, scores.view(size, j)], dim=1), valid)
        if not losses:
            raise ValueError("a matcher batch needs at least two samples or two distinct ids to rewrite")
        losses["loss"] = sum(losses.values())
        return losses

    def patched_scores(
        self, codes: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, P]`` of each text against P pasted-code versions of its own image, and
        ``valid [B, P]`` (False where the paste left the codes unchanged)."""
        p = self.patch_negatives
        true_codes = codes.repeat_interleave(p, 0)  # [B·P, h, w]
        # another image of the batch for every row: a shift by 1..B-1 never maps a row to itself
        shift = 1 + int(torch.randint(len(codes) - 1, (1,)))
        donors = (torch.arange(len(codes), device=codes.device) + shift) % len(codes)
        pasted = pasted_codes(true_codes, codes[donors].repeat_interleave(p, 0))
        valid = (pasted != true_codes).flatten(1).any(1).view(len(codes), p)
        if self.matcher.image_input == "pixels":
            with torch.autocast(device_type=codes.device.type, enabled=False):  # the true images were decoded in fp32
                image = self._decode(pasted).to(codes.device)
        else:
            image = pasted
        scores = self.matcher(ids.repeat_interleave(p, 0), mask.repeat_interleave(p, 0), image)
        return scores.view(len(codes), p), valid

    def negative_texts(
        self, ids: torch.Tensor, mask: torch.Tensor, similar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: the rewritten texts and the nearest other captions.

        Returns ``texts [B, J, L]``, their masks and ``valid Bool[B, J]`` (False: equal to the true
        text, or no such caption)."""
        rows: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        if self.swap_negatives:
            order = similar.argmax(dim=1)
            rows += [substituted(ids, mask, ids[order], mask[order]), exchanged(ids, mask)]
            masks += [mask, mask]
        k = min(self.text_negatives, len(ids) - 1)
        found = torch.ones(len(ids), 0, dtype=torch.bool, device=ids.device)
        if k > 0:
            nearest = similar.topk(k, dim=1)
            rows += [ids[nearest.indices[:, col]] for col in range(k)]
            masks += [mask[nearest.indices[:, col]] for col in range(k)]
            found = nearest.values > -1e30  # a caption at -inf is a duplicate of the true one
        if not rows:
            empty = ids[:, None, :0].expand(-1, 0, ids.shape[1])
            return empty, empty.bool(), torch.ones(len(ids), 0, dtype=torch.bool, device=ids.device)
        texts, texts_mask = torch.stack(rows, dim=1), torch.stack(masks, dim=1)
        valid = ~((texts == ids[:, None]) | ~texts_mask).all(-1) | (texts_mask != mask[:, None]).any(-1)
        if k > 0:
            valid[:, -k:] &= found
        return texts, texts_mask, valid

    def validation_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        with torch.no_grad():
            losses = self.forward(batch)
        return {k: float(v) for k, v in losses.items()}


def caption_similarity(ids: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Cosine similarity of the captions' bags of ids ``[B, B]``; ``-inf`` on the diagonal and where
    two captions are the same text (a duplicate is not a negative)."""
    bags = torch.zeros(len(ids), vocab_size, device=ids.device)
    bags.scatter_add_(1, ids.clamp(0, vocab_size - 1), mask.float())
    bags = F.normalize(bags, dim=1)
    sim = bags @ bags.t()
    same = ((ids[:, None, :] == ids[None, :, :]) | ~(mask[:, None, :] | mask[None, :, :])).all(-1)
    same &= mask.sum(1)[:, None] == mask.sum(1)[None, :]
    return sim.masked_fill(same, float("-inf"))


def _inner_positions(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, L]``: the real ids between BOS (the first) and EOS (the last real one)."""
    lengths = mask.sum(1)
    pos = torch.arange(mask.shape[1], device=mask.device)[None]
    return (pos >= 1) & (pos < (lengths - 1)[:, None])


def substituted(ids: torch.Tensor, mask: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor) -> torch.Tensor:
    """``ids`` with one inner id replaced by ``other``'s id at the same position, at a position
    (drawn from torch's global RNG) where the two differ; a row where none differs is unchanged."""
    inner = _inner_positions(mask) & _inner_positions(other_mask) & (ids != other)
    out = ids.clone()
    for b in range(len(ids)):
        where = inner[b].nonzero().flatten()
        if len(where):
            pos = where[int(torch.randint(len(where), (1,)))]
            out[b, pos] = other[b, pos]
    return out


def exchanged(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``ids`` with two inner ids of different value exchanged; unchanged if there are none."""
    inner = _inner_positions(mask)
    out = ids.clone()
    for b in range(len(ids)):
        where = inner[b].nonzero().flatten()
        if len(where) < 2:
            continue
        first = where[int(torch.randint(len(where), (1,)))]
        others = where[ids[b, where] != ids[b, first]]
        if len(others):
            second = others[int(torch.randint(len(others), (1,)))]
            out[b, first], out[b, second] = ids[b, second], ids[b, first]
    return out


def pasted_codes(codes: torch.Tensor, donors: torch.Tensor, max_block: int = 2) -> torch.Tensor:
    """``codes [N, h, w]`` with a block of ``donors [N, h, w]``'s codes pasted in, per row.

    The block is square, 1 to ``max_block`` codes a side (drawn from torch's global RNG), taken from
    the donor at a place where it holds a code other than its most frequent one (its object, not its
    background), and pasted at a uniformly drawn place of the row. A row whose donor is all one code
    is unchanged."""
    out = codes.clone()
    n, h, w = codes.shape
    for row in range(n):
        donor = donors[row]
        side = min(int(torch.randint(1, max_block + 1, (1,))), h, w)
        background = donor.flatten().mode().values
        found = (donor[: h - side + 1, : w - side + 1] != background).nonzero()
        if not len(found):
            continue
        top, left = found[int(torch.randint(len(found), (1,)))].tolist()
        y, x = int(torch.randint(h - side + 1, (1,))), int(torch.randint(w - side + 1, (1,)))
        out[row, y : y + side, x : x + side] = donor[top : top + side, left : left + side]
    return out


def listwise_loss(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of choosing column 0 among the valid columns of ``scores [B, 1+K]``."""
    return F.cross_entropy(
        scores.masked_fill(~valid, float("-inf")), torch.zeros(len(scores), dtype=torch.long, device=scores.device)
    )


@STAGES.register_module()
class TrainMatcher(Stage):
    """Train the run's image–text matching model (see the module docstring).

    Args:
        trainer: steps, batch size, learning rate, precision… (the Trainer's configuration).
        name: the stage folder (default ``train_matcher``).
        text_tokenizer_from, image_tokenizer_from: the stages (or folders) the tokenizers come from.
        data: the training pairs (default: the recipe's ``data``).
        hidden_size, num_layers, num_heads: the matcher's size.
        image_negatives: hard negative images per text.
        text_negatives: other captions per image, nearest first.
        swap_negatives: also rank each image's text against two rewritten forms of it.
        patch_negatives: also rank each text's image against this many versions of it with another
            image's object codes pasted in (a stray or overdrawn object; see the module docstring).
        image_input: what the matcher reads, ``codes`` or ``pixels`` (decoded candidates; trained
            on reconstructions, see the module docstring). Rerank with ``matcher`` for codes and
            ``pixel_matcher`` for pixels.
    """

    trains = "matcher"

    def __init__(
        self,
        trainer: TrainerConfig | None = None,
        name: str | None = None,
        text_tokenizer_from: str = "fit_text_tokenizer",
        image_tokenizer_from: str = "train_tokenizer",
        data: torch.utils.data.Dataset | None = None,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        image_negatives: int = 5,
        text_negatives: int = 2,
        swap_negatives: bool = True,
        patch_negatives: int = 0,
        image_input: str = "codes",
    ) -> None:
        super().__init__(name)
        if image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {', '.join(IMAGE_INPUTS)}, got {image_input!r}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be a multiple of num_heads {num_heads}")
        if min(image_negatives, text_negatives, patch_negatives) < 0:
            raise ValueError("image_negatives, text_negatives and patch_negatives must not be negative")
        self.trainer = trainer or TrainerConfig()
        self.text_tokenizer_from, self.image_tokenizer_from = text_tokenizer_from, image_tokenizer_from
        self.data = data
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.image_negatives, self.text_negatives, self.swap_negatives = image_negatives, text_negatives, swap_negatives
        self.patch_negatives = patch_negatives
        self.image_input = image_input

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vilgkit.engine.trainer import Trainer

        out_dir = ctx.stage_dir(self.name)
        text_tok, image_tok = load_tokenizers(ctx, self.text_tokenizer_from, self.image_tokenizer_from)
        dataset = self.data if self.data is not None else ctx.component("data")
        max_len = self._max_text_len(ctx)
        tokenized = self._tokenized(ctx, dataset, text_tok, image_tok, max_len, out_dir)
        if self.image_input == "pixels":
            grid = -(-max(tokenized.tensors["image"].shape[-2:]) // PIXEL_STRIDE)
        else:
            grid = max(tokenized.tensors["codes"].shape[-2:])
        config = {
            "text_vocab_size": int(text_tok.vocab_size),
            "max_text_len": max_len,
            "max_image_grid": int(grid),
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "pad_id": int(text_tok.pad_id),
            "image_input": self.image_input,
        }
        table = code_table_of(image_tok) if self.image_input == "codes" else None

        def fresh() -> MatcherTrainable:
            return MatcherTrainable(
                ImageTextMatcher(code_table=table, **config),
                self.image_negatives,
                self.text_negatives,
                self.swap_negatives,
                self.patch_negatives,
                decode=lambda codes: reconstructed_pixels(image_tok, codes),
            )

        trainer = Trainer.for_stage(
            ctx,
            self,
            fresh(),
            tokenized,
            self.trainer,
            collate_fn=collate_tokenized,
            rebuild=fresh,
            export_parts={"matcher.": artifacts.MATCHER_WEIGHTS},
        )
        metrics = trainer.fit(resume=ctx.resume)
        if trainer.strategy.is_main:
            record = {
                "config": config,
                "text_tokenizer_from": self.text_tokenizer_from,
                "image_tokenizer_from": self.image_tokenizer_from,
                "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
            }
            artifacts.write_json(out_dir / artifacts.MATCHER_RECORD, record)
        return record["metrics"] if trainer.strategy.is_main else {}

    @staticmethod
    def _max_text_len(ctx: RunContext) -> int:
        """The generator's text budget when the recipe has one (prompts arrive framed to it), else 64."""
        generator = (ctx.recipe.get("generator") or {}).get("init_args") or {}
        return int(generator.get("max_text_len", 64))

    def _tokenized(
        self, ctx: RunContext, dataset, text_tok, image_tok, max_len: int, out_dir: Path
    ) -> TokenizedDataset:
        fingerprint = tokenized_fingerprint(
            ctx, dataset, (self.text_tokenizer_from, self.image_tokenizer_from), text_tok, image_tok, max_len
        )
        if self.image_input == "pixels":  # the cache then also holds the reconstructions
            fingerprint += "+pixels"
        found = _load_cached([out_dir], fingerprint)
        if found is not None:
            return found[0]
        tensors, _ = tokenize_dataset(
            dataset, text_tok, image_tok, max_text_len=max_len, desc=f"{self.name}: tokenizing"
        )
        keep = {k: tensors[k].contiguous() for k in ("codes", "text_ids", "text_mask")}
        if self.image_input == "pixels":
            keep["image"] = reconstructed_pixels(image_tok, keep["codes"])
        artifacts.save_weights(out_dir / artifacts.TOKENIZED_CACHE, keep, metadata={"fingerprint": fingerprint})
        return TokenizedDataset(keep)


def reconstructed_pixels(image_tokenizer: nn.Module, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The tokenizer's decoding of ``codes [N, h, w]`` as ``uint8 [N, 3, H, W]`` (a quarter of the
    float memory; the matcher rescales uint8 to [-1, 1])."""
    device = next(image_tokenizer.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(codes), batch_size):
            images = image_tokenizer.decode(codes[start : start + batch_size].to(device)).float()
            out.append(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out)
