"""ERNIE-ViLG's unified bidirectional generator: one transformer, encoder and decoder shared (§3.1.2).

Streams (source segments, then the target; docs/architecture.md §2 masks from the attention pattern):

* text→image ``[text | image]``: the text (BOS … EOS, padded) is the source; the image target is
  *shifted*: slot k holds code k−1 (slot 0 a learned begin-of-image embedding) and predicts code k,
  so the target has exactly h·w slots and slot k sits at grid position (k // w, k % w).
* image→text ``[image | text]``: the codes are the source; target slot j holds text id j (BOS first)
  and predicts id j+1, so a caption of L ids (incl. BOS/EOS) has L−1 target slots.
* VQA ``[image, question | answer]``: as image→text with the question as a second source segment.

Embeddings: separate token tables for text ids and image codes, 1-D learned positions for every
text segment (restarting at 0), 2-D learned (row + column) positions for image slots, and a type
embedding for {text, image} × {source, target} that marks the segment boundary.
Output heads are separate per modality; the final LayerNorm is shared.

Dimension key:
    B batch, L text length (ids), Lq question length, La answer length, h, w image grid,
    T target slots, S source length, N stream length (S + T), C hidden size, V vocabulary.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vilgkit.interfaces.attention import AttentionPattern
from vilgkit.interfaces.generator import Generator, GeneratorOutput
from vilgkit.interfaces.trainable import Trainable
from vilgkit.layout import Layout
from vilgkit.models.blocks import Block
from vilgkit.models.decoding import IMAGE_SRC, IMAGE_TGT, TEXT_SRC, TEXT_TGT, DecodingMixin
from vilgkit.models.dense_attention import DenseAttention
from vilgkit.models.losses import token_cross_entropy
from vilgkit.registry import GENERATORS

DIRECTIONS = ("txt2img", "img2txt", "vqa")


@GENERATORS.register_module()
class UnifiedTransformer(DecodingMixin, Generator, Trainable):
    """One pre-norm transformer for text→image, image→text and generative VQA.

    Args:
        text_vocab_size: number of text ids (the text tokenizer's ``vocab_size``).
        image_vocab_size: number of image codes (the image tokenizer's ``codebook_size``).
        hidden_size: C.
        num_layers: number of transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP width as a multiple of C.
        dropout: embedding and residual dropout.
        max_text_len: longest text segment in ids (BOS and EOS included); sizes the 1-D positions.
        max_image_grid: longest image side in codes; sizes the 2-D positions.
        attention: which keys each query sees per layer; ``None`` is dense (UniLM masks).
        text_dropout: probability, in training, of replacing a text→image sample's text by the empty
            prompt ``[BOS, EOS]`` — what classifier-free guidance needs at sampling time.
        qk_norm: LayerNorm per head on queries and keys before attention (see :class:`Block`).
        pad_id, bos_id, eos_id: the text tokenizer's special ids.

    Batch keys read by :meth:`forward`: ``text_ids Long[B, L]`` (BOS … EOS, right-padded with
    ``pad_id``), ``text_mask Bool[B, L]`` (True = real), ``codes Long[B, h, w]``; for VQA
    ``question_ids/question_mask [B, Lq]`` and ``answer_ids/answer_mask [B, La]`` in the same
    BOS … EOS format; optional ``directions`` (a list from ``"txt2img"``, ``"img2txt"``, ``"vqa"``).
    """

    def __init__(
        self,
        text_vocab_size: int,
        image_vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        max_text_len: int = 32,
        max_image_grid: int = 16,
        attention: AttentionPattern | None = None,
        text_dropout: float = 0.0,
        qk_norm: bool = False,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (
            ("text_vocab_size", text_vocab_size),
            ("image_vocab_size", image_vocab_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("max_text_len", max_text_len),
            ("max_image_grid", max_image_grid),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_text_len < 2:
            raise ValueError(f"max_text_len must be >= 2 (BOS and EOS), got {max_text_len}")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        for name, p in (("dropout", dropout), ("text_dropout", text_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        for name, i in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= i < text_vocab_size:
                raise ValueError(f"{name}={i} is outside the text vocabulary [0, {text_vocab_size})")
        if attention is not None and not isinstance(attention, AttentionPattern):
            raise TypeError(f"attention must be an AttentionPattern or None, got {type(attention).__name__}")
        self.text_vocab_size, self.image_vocab_size = text_vocab_size, image_vocab_size
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.max_text_len, self.max_image_grid = max_text_len, max_image_grid
        self.text_dropout = text_dropout
        self.qk_norm = qk_norm
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.attention = attention if attention is not None else DenseAttention()

        C = hidden_size
        self.text_embed = nn.Embedding(text_vocab_size, C)
        self.image_embed = nn.Embedding(image_vocab_size, C)
        self.boi = nn.Parameter(torch.empty(C))
        self.text_pos = nn.Embedding(max_text_len, C)
        self.row_pos = nn.Embedding(max_image_grid, C)
        self.col_pos = nn.Embedding(max_image_grid, C)
        self.type_embed = nn.Embedding(4, C)
        self.embed_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            Block(C, num_heads, mlp_ratio, dropout, self.attention, i, num_layers, qk_norm=qk_norm)
            for i in range(num_layers)
        )
        self.norm = nn.LayerNorm(C)
        self.text_head = nn.Linear(C, text_vocab_size, bias=False)
        self.image_head = nn.Linear(C, image_vocab_size, bias=False)
        self.init_weights()

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """Tiny init kwargs for the registry-wide conformance tests."""
        return dict(
            text_vocab_size=40,
            image_vocab_size=24,
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            max_text_len=12,
            max_image_grid=4,
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 style init (also used after materialising a model built on ``meta``).

        Residual output projections are scaled by ``1/sqrt(2·layers)`` so the residual stream's
        variance does not grow with depth.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.layers:
            for proj in (block.proj, block.mlp.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.num_layers))
        nn.init.normal_(self.boi, std=0.02)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def muon_excluded(self) -> set[str]:
        """Output heads stay on AdamW under ``optimizer: muon`` (they map to vocabularies, not hidden features)."""
        return {"text_head.weight", "image_head.weight"}

    # ----------------------------------------------------------------- validation
    def _check_text(self, ids: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
        """Validate a BOS … EOS id batch; returns its mask (``ids != pad_id`` when not given)."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(
                f"{name}_ids must be a Long tensor [B, L], got "
                f"{getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}"
            )
        if ids.shape[1] > self.max_text_len:
            raise ValueError(
                f"{name}_ids has length {ids.shape[1]} > max_text_len={self.max_text_len}; "
                "truncate the text or build the generator with a larger max_text_len"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.text_vocab_size):
            raise ValueError(f"{name}_ids contain ids outside [0, {self.text_vocab_size})")
        if mask is None:
            mask = ids != self.pad_id
        if mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"{name}_mask must be Bool with the shape of {name}_ids {tuple(ids.shape)}")
        if ids.shape[1] and not bool(mask[:, 0].all()):
            raise ValueError(f"every {name} must start with a real token (BOS); found an empty row")
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError(f"{name}_mask must be right-padded (real tokens first, then padding)")
        return mask

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3 or codes.dtype != torch.long:
            raise ValueError(
                f"codes must be a Long tensor [B, h, w], got "
                f"{getattr(codes, 'dtype', type(codes))} {tuple(getattr(codes, 'shape', ()))}"
            )
        h, w = codes.shape[1:]
        if h > self.max_image_grid or w > self.max_image_grid:
            raise ValueError(f"image grid {h}x{w} exceeds max_image_grid={self.max_image_grid}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.image_vocab_size):
            raise ValueError(f"codes contain values outside [0, {self.image_vocab_size})")

    @staticmethod
    def _check_batch(ids: torch.Tensor, codes: torch.Tensor) -> None:
        if ids.shape[0] != codes.shape[0]:
            raise ValueError(f"batch sizes differ: {ids.shape[0]} texts vs {codes.shape[0]} code grids")

    # ----------------------------------------------------------------- embeddings
    def _text_tokens(self, ids: torch.Tensor, role: int) -> torch.Tensor:
        """``[B, L]`` ids → ``[B, L, C]`` (token + 1-D position + type)."""
        pos = self.text_pos.weight[: ids.shape[1]]
        return self.text_embed(ids) + pos + self.type_embed.weight[role]

    def _grid_pos(self, h: int, w: int, role: int) -> torch.Tensor:
        """``[h*w, C]`` row + column position (raster order) + type."""
        pos = self.row_pos.weight[:h, None, :] + self.col_pos.weight[None, :w, :]  # [h, w, C]
        return rearrange(pos, "h w c -> (h w) c") + self.type_embed.weight[role]

    def _image_source(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, h, w]`` codes → ``[B, h*w, C]``."""
        h, w = codes.shape[1:]
        return self.image_embed(rearrange(codes, "b h w -> b (h w)")) + self._grid_pos(h, w, IMAGE_SRC)

    def _image_target(self, codes: torch.Tensor) -> torch.Tensor:
        """Shifted target inputs: slot 0 = BOI, slot k = code k−1, positioned at slot k. ``[B, h*w, C]``."""
        B, h, w = codes.shape
        flat = rearrange(codes, "b h w -> b (h w)")
        tokens = torch.cat([self.boi.expand(B, 1, -1), self.image_embed(flat[:, :-1])], dim=1)
        return tokens + self._grid_pos(h, w, IMAGE_TGT)

    def _drop_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text dropout for CFG: each row becomes ``[BOS, EOS, pad…]`` with probability ``text_dropout``."""
        if not (self.training and self.text_dropout > 0):
            return ids, mask
        empty_ids, empty_mask = self.empty_prompt(ids.shape[0], ids.shape[1], ids.device)
        drop = torch.rand(ids.shape[0], 1, device=ids.device) < self.text_dropout
        return torch.where(drop, empty_ids, ids), torch.where(drop, empty_mask, mask)

    def empty_prompt(
        self, batch_size: int, length: int, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional prompt ``[BOS, EOS, pad…]`` (ids ``[B, L]``, mask ``[B, L]``), ``L >= 2``."""
        if length < 2:
            raise ValueError(f"the empty prompt needs a text length >= 2, got {length}")
        ids = torch.full((batch_size, length), self.pad_id, dtype=torch.long, device=device)
        ids[:, 0], ids[:, 1] = self.bos_id, self.eos_id
        return ids, ids.new_zeros(ids.shape, dtype=torch.bool).index_fill_(1, torch.arange(2, device=device), True)

    # ----------------------------------------------------------------- streams
    def _stream(self, direction: str, batch: dict[str, Any], drop_text: bool = False):
        """Embed one direction's stream.

        Returns:
            ``(x [B, N, C], key_padding [B, N] or None, layout, labels [B, T] with -100 = ignore)``.
        """
        if direction == "txt2img":
            ids, mask, codes = batch["text_ids"], batch.get("text_mask"), batch["codes"]
            mask = self._check_text(ids, mask, "text")
            self._check_codes(codes)
            self._check_batch(ids, codes)
            if drop_text:
                ids, mask = self._drop_text(ids, mask)
            h, w = codes.shape[1:]
            layout = Layout.text_to_image(ids.shape[1], h, w)
            x = torch.cat([self._text_tokens(ids, TEXT_SRC), self._image_target(codes)], dim=1)
            pad = torch.cat([~mask, mask.new_zeros(mask.shape[0], h * w)], dim=1)
            labels = rearrange(codes, "b h w -> b (h w)")
        else:
            codes = batch["codes"]
            self._check_codes(codes)
            h, w = codes.shape[1:]
            key = "text" if direction == "img2txt" else "answer"
            ids, mask = batch[f"{key}_ids"], batch.get(f"{key}_mask")
            mask = self._check_text(ids, mask, key)
            self._check_batch(ids, codes)
            if ids.shape[1] < 2:
                raise ValueError(f"{key}_ids need at least BOS and EOS (length >= 2), got length {ids.shape[1]}")
            parts, pads = [self._image_source(codes)], [mask.new_zeros(mask.shape[0], h * w)]
            if direction == "vqa":
                q_ids, q_mask = batch["question_ids"], batch.get("question_mask")
                q_mask = self._check_text(q_ids, q_mask, "question")
                self._check_batch(q_ids, codes)
                parts.append(self._text_tokens(q_ids, TEXT_SRC))
                pads.append(~q_mask)
                layout = Layout.vqa(h, w, q_ids.shape[1], ids.shape[1] - 1)
            else:
                layout = Layout.image_to_text(h, w, ids.shape[1] - 1)
            parts.append(self._text_tokens(ids[:, :-1], TEXT_TGT))
            pads.append(~mask[:, :-1])
            x, pad = torch.cat(parts, dim=1), torch.cat(pads, dim=1)
            labels = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        return self.embed_drop(x), (pad if bool(pad.any()) else None), layout, labels

    def _encode(self, x: torch.Tensor, layout: Layout, pad: torch.Tensor | None) -> torch.Tensor:
        """All blocks, then the final norm: ``[B, N, C]`` → ``[B, N, C]``."""
        for block in self.layers:
            x = block(x, layout, pad)
        return self.norm(x)

    def _directions(self, batch: dict[str, Any]) -> list[str]:
        if "directions" in batch and batch["directions"] is not None:
            dirs = list(batch["directions"])
            bad = [d for d in dirs if d not in DIRECTIONS]
            if bad or not dirs:
                raise ValueError(f"unknown directions {bad or dirs}; choose from {DIRECTIONS}")
            return dirs
        dirs = []
        if "codes" in batch and "text_ids" in batch:
            dirs += ["txt2img", "img2txt"]
        if "codes" in batch and "question_ids" in batch and "answer_ids" in batch:
            dirs.append("vqa")
        if not dirs:
            raise ValueError(
                f"the batch has neither text_ids+codes nor codes+question_ids+answer_ids; got keys {sorted(batch)}"
            )
        return dirs

    # ----------------------------------------------------------------- training
    def forward(self, batch: dict[str, Any], group: str = "main", step: int = 0) -> GeneratorOutput:
        """Teacher-forced pass over every direction in the batch (also the training pass: ``group``
        and ``step`` are the engine's, and change nothing here).

        Losses are per-token mean cross-entropies per direction; ``"loss"`` is their sum
        (``L = L_txt2img + L_img2txt`` of eq. 3, plus ``L_vqa`` when present).

        Returns:
            :class:`GeneratorOutput` with ``losses``, ``logits`` and ``labels`` per direction
            (``[B, T, V]``, ``[B, T]``) and ``image_hidden [B, h*w, C]`` (final-norm hidden states of
            the image target slots).
        """
        losses: dict[str, torch.Tensor] = {}
        logits: dict[str, torch.Tensor] = {}
        targets: dict[str, torch.Tensor] = {}
        image_hidden = None
        for direction in self._directions(batch):
            x, pad, layout, labels = self._stream(direction, batch, drop_text=direction == "txt2img")
            hidden = self._encode(x, layout, pad)[:, layout.source_length :]  # [B, T, C]
            head = self.image_head if direction == "txt2img" else self.text_head
            out = head(hidden)
            if direction == "txt2img":
                image_hidden = hidden
            logits[direction], targets[direction] = out, labels
            losses[direction] = token_cross_entropy(out, labels)  # = F.cross_entropy in fp32, without its copies
        losses["loss"] = sum(losses.values())
        return GeneratorOutput(losses=losses, image_hidden=image_hidden, logits=logits, labels=targets)

    def training_losses(
        self, outputs: GeneratorOutput, batch: dict[str, Any], group: str, step: int
    ) -> dict[str, torch.Tensor]:
        return outputs.losses

    @torch.no_grad()
    def validation_metrics(self, batch: dict[str, Any]) -> dict[str, float]:
        """Per-direction losses and next-token accuracy on a held-out batch."""
        out = self(batch)
        metrics = {f"val_{k}": float(v) for k, v in out.losses.items()}
        for direction, logit in out.logits.items():
            labels = out.labels[direction]
            real = labels != -100
            metrics[f"val_{direction}_acc"] = float((logit.argmax(-1) == labels)[real].float().mean())
        return metrics

    def image_hidden_states(
        self, text_ids: torch.Tensor, text_mask: torch.Tensor | None, codes: torch.Tensor
    ) -> torch.Tensor:
        """One teacher-forced text→image pass → final hidden states of the image slots ``[B, h*w, C]``.

        Slot k's state is the one that predicts code k. Gradient mode and train/eval mode are the
        caller's (the end-to-end reconstructor trains through it).
        """
        x, pad, layout, _ = self._stream("txt2img", {"text_ids": text_ids, "text_mask": text_mask, "codes": codes})
        return self._encode(x, layout, pad)[:, layout.source_length :]

    def text_log_likelihood(
        self, codes: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log P(text | image codes)`` per row ``Float[B]``: sum over real target ids (EOS included).

        Runs in eval mode without gradients (it scores candidates for self-reranking).
        """
        with self._inference():
            x, pad, layout, labels = self._stream(
                "img2txt", {"codes": codes, "text_ids": text_ids, "text_mask": text_mask}
            )
            hidden = self._encode(x, layout, pad)[:, layout.source_length :]
            logp = self.text_head(hidden).float().log_softmax(-1)  # [B, T, V]
            real = labels != -100
            picked = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
            return (picked * real).sum(-1)

    def dummy_batch(
        self,
        batch_size: int = 2,
        text_len: int = 6,
        grid: tuple[int, int] = (2, 2),
        vqa: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """A random, correctly formatted batch (BOS … EOS with some padding) for tests and benchmarks."""

        def text(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            lengths = torch.randint(2, n + 1, (batch_size,), generator=generator)
            lengths[0] = n  # at least one full row, so the batch really has length n
            specials = min(self.pad_id, self.bos_id, self.eos_id), max(self.pad_id, self.bos_id, self.eos_id)
            ids = torch.randint(specials[1] + 1, self.text_vocab_size, (batch_size, n), generator=generator)
            mask = torch.arange(n)[None] < lengths[:, None]
            ids[:, 0] = self.bos_id
            ids[torch.arange(batch_size), lengths - 1] = self.eos_id
            return ids.masked_fill(~mask, self.pad_id), mask

        batch: dict[str, torch.Tensor] = {}
        batch["text_ids"], batch["text_mask"] = text(text_len)
        batch["codes"] = torch.randint(0, self.image_vocab_size, (batch_size, *grid), generator=generator)
        if vqa:
            batch["question_ids"], batch["question_mask"] = text(text_len)
            batch["answer_ids"], batch["answer_mask"] = text(max(2, text_len // 2))
        return batch
