"""Incremental decoding for :class:`~vilgkit.models.unified.UnifiedTransformer` with a KV cache.

The source segments are prefilled once (for the unique prompts only, then copied to every
candidate row); afterwards each step feeds one position per row through the cached keys/values.
Nothing per step rebuilds a mask: the padding mask is built once after the prefill and sliced, and
a sparse pattern's ``decode_keys`` are looked up once per layout (then reused for every step).

Dimension key:
    B prompts / images, Nc candidates per prompt, R decoding rows, S source length, T target slots,
    N stream length, C hidden size, V vocabulary, K beams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from vilgkit.interfaces.attention import AttentionPattern
from vilgkit.interfaces.decode_cache import CacheGeometry, DecodeCache
from vilgkit.layout import Layout
from vilgkit.models.cache import KVCache
from vilgkit.models.gemv import decode_linear
from vilgkit.models.sampling import check_sampling_args, guide, sample_next

_MAX_MEMO = 32
# type-embedding rows (modality × role), shared with the model
TEXT_SRC, IMAGE_SRC, TEXT_TGT, IMAGE_TGT = range(4)


class DecodingMixin:
    """Sampling, text decoding and the KV cache (mixed into the generator class)."""

    # ----------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode (no dropout) and no autograd, restoring the previous mode afterwards."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _memo(self, key, build):
        memo = self.__dict__.setdefault("_decode_memo", {})
        if key not in memo:
            if len(memo) >= _MAX_MEMO:
                memo.pop(next(iter(memo)))
            memo[key] = build()
        return memo[key]

    def _source_mask(self, layer: int, layout: Layout, device: torch.device) -> torch.Tensor:
        """``Bool[S, S]``: the oracle restricted to the source (the source never sees the target)."""
        S = layout.source_length
        return self._memo(
            ("src", layer, layout, str(device)),
            lambda: self.attention.allowed(layer, self.num_layers, layout)[:S, :S].to(device),
        )

    def _key_plan(self, layout: Layout, device: torch.device) -> list[list[torch.Tensor | None] | None]:
        """Per layer, per target step: the keys a decoding step attends (``None`` = a sliced prefix)."""

        def build() -> list[list[torch.Tensor | None] | None]:
            pattern: AttentionPattern = self.attention
            custom = type(pattern).decode_keys is not AttentionPattern.decode_keys
            plans: list[list[torch.Tensor | None] | None] = []
            for layer in range(self.num_layers):
                # the base-class decode_keys rebuilds the oracle per call: read its rows once instead
                allowed = None if custom else pattern.allowed(layer, self.num_layers, layout)
                steps: list[torch.Tensor | None] = []
                for pos in range(layout.source_length, layout.length):
                    if custom:
                        idx = pattern.decode_keys(layer, self.num_layers, layout, pos)
                    else:
                        row = allowed[pos, : pos + 1]
                        idx = None if bool(row.all()) else row.nonzero().flatten()
                    steps.append(None if idx is None else idx.to(device=device, dtype=torch.long))
                plans.append(None if all(s is None for s in steps) else steps)
            return plans

        return self._memo(("plan", layout, str(device)), build)

    def new_cache(
        self,
        batch_size: int,
        layout: Layout,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DecodeCache:
        """An empty decoding cache for ``batch_size`` rows of ``layout``.

        The attention pattern's own cache when it has one (:meth:`AttentionPattern.decode_cache`:
        the sparse plugin's keeps row / column keys contiguous), else the generic :class:`KVCache`
        (one ``[R, H, N, D]`` key and value tensor per layer; slices or gathers ``decode_keys``).

        Args:
            batch_size: R, every row decoded together (prompts × candidates, × 2 with guidance).
            layout: the full stream (source segments and the target to decode).
            device, dtype: default to the model's parameters'.
        """
        ref = self.text_head.weight
        device = torch.device(device) if device is not None else ref.device
        dtype = dtype or ref.dtype
        heads, head_dim = self.num_heads, self.hidden_size // self.num_heads
        geometry = CacheGeometry(batch_size, heads, head_dim, device, dtype)
        own = self.attention.decode_cache(layout, self.num_layers, geometry)
        if own is not None:
            return own
        shape = (batch_size, heads, layout.length, head_dim)
        zeros = lambda: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        return KVCache(
            layout=layout,
            keys=[zeros() for _ in range(self.num_layers)],
            values=[zeros() for _ in range(self.num_layers)],
            key_padding=torch.zeros(batch_size, layout.length, dtype=torch.bool, device=device),
            key_plan=self._key_plan(layout, device),
        )

    def _prefill(self, x: torch.Tensor, pad: torch.Tensor, cache: DecodeCache, rows: torch.Tensor) -> None:
        """Run the source ``x [U, S, C]`` (U unique rows) and copy keys/values to cache rows ``rows [R]``."""
        layout, S = cache.layout, cache.layout.source_length
        for layer, block in enumerate(self.layers):
            mask = self._source_mask(layer, layout, x.device)[None, None] & ~pad[:, None, None, :]  # [U,1,S,S]
            x, k, v = block.prefill(x, mask)
            cache.write_source(layer, k.index_select(0, rows), v.index_select(0, rows))
        cache.set_source_padding(pad.index_select(0, rows))
        cache.length = S

    def _step(self, x: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """Feed ``x [R, C]`` at the next cache position; returns its final-norm hidden state ``[R, C]``."""
        pos, x = cache.length, x[:, None]
        for block in self.layers:
            x = block.decode(x, cache, pos)
        cache.length = pos + 1
        return self.norm(x[:, 0])

    # ----------------------------------------------------------------- text → image
    def sample_images(
        self,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor | None,
        grid: tuple[int, int],
        *,
        num_candidates: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample image codes for each prompt, one code per step through the KV cache.

        Args:
            text_ids: ``Long[B, L]`` prompts (BOS … EOS, right-padded).
            text_mask: ``Bool[B, L]`` True at real ids (``None``: ``text_ids != pad_id``).
            grid: ``(h, w)`` codes to generate.
            num_candidates: Nc samples per prompt.
            temperature: softmax temperature; 0 is greedy.
            top_k, top_p: truncate to the k most likely / the nucleus of mass p.
            cfg_scale: classifier-free guidance; ``!= 1`` adds one unconditional (empty prompt) row per
                candidate, in the same batch: ``logits = uncond + scale·(cond − uncond)``.
            generator: seeds the draws (same generator state → same codes).

        Returns:
            ``Long[B·Nc, h, w]``, candidate-major per prompt (rows ``b·Nc … b·Nc+Nc−1`` are prompt b's).
        """
        if grid is None or len(grid) != 2 or min(grid) <= 0:
            raise ValueError(f"grid must be a (height, width) pair of positive ints, got {grid}")
        h, w = int(grid[0]), int(grid[1])
        if max(h, w) > self.max_image_grid:
            raise ValueError(f"grid {h}x{w} exceeds max_image_grid={self.max_image_grid}")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        check_sampling_args(temperature, top_k, top_p, self.image_vocab_size)
        text_mask = self._check_text(text_ids, text_mask, "text")
        B, L, Nc, T = text_ids.shape[0], text_ids.shape[1], num_candidates, h * w
        guided = cfg_scale != 1.0
        device = text_ids.device
        with self._inference():
            ids, mask = text_ids, text_mask
            rows = torch.arange(B, device=device).repeat_interleave(Nc)  # candidate-major rows → prompt
            if guided:  # one extra unique source (the empty prompt) serves every unconditional row
                if L < 2:
                    raise ValueError("classifier-free guidance needs prompts padded to length >= 2")
                empty_ids, empty_mask = self.empty_prompt(1, L, device)
                ids, mask = torch.cat([ids, empty_ids]), torch.cat([mask, empty_mask])
                rows = torch.cat([rows, torch.full_like(rows, B)])
            layout = Layout.text_to_image(L, h, w)
            cache = self.new_cache(rows.numel(), layout, device, self.text_head.weight.dtype)
            self._prefill(self._text_tokens(ids, TEXT_SRC), ~mask, cache, rows)
            slots = self._grid_pos(h, w, IMAGE_TGT)  # [T, C] target positions + type
            out = torch.empty(B * Nc, T, dtype=torch.long, device=device)
            x = (self.boi + slots[0]).expand(rows.numel(), -1)
            for t in range(T):
                logits = decode_linear(self.image_head, self._step(x, cache)).float()  # [R, V]
                if guided:
                    logits = guide(logits, cfg_scale)
                nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
                out[:, t] = nxt
                if t + 1 < T:
                    emb = self.image_embed(nxt)
                    x = (torch.cat([emb, emb]) if guided else emb) + slots[t + 1]
        return out.view(B * Nc, h, w)

    # ----------------------------------------------------------------- image → text
    def _text_source(
        self,
        codes: torch.Tensor,
        question_ids: torch.Tensor | None,
        question_mask: torch.Tensor | None,
        max_length: int,
    ) -> tuple[Layout, torch.Tensor, torch.Tensor]:
        """Embedded source ``[B, S, C]``, its padding ``Bool[B, S]`` and the layout (target = max_length)."""
        self._check_codes(codes)
        B, h, w = codes.shape
        x, pad = self._image_source(codes), torch.zeros(B, h * w, dtype=torch.bool, device=codes.device)
        if question_ids is None:
            return Layout.image_to_text(h, w, max_length), x, pad
        q_mask = self._check_text(question_ids, question_mask, "question")
        if question_ids.shape[0] != B:
            raise ValueError(f"{question_ids.shape[0]} questions for {B} images")
        x = torch.cat([x, self._text_tokens(question_ids, TEXT_SRC)], dim=1)
        return Layout.vqa(h, w, question_ids.shape[1], max_length), x, torch.cat([pad, ~q_mask], dim=1)

    def _text_logits(self, prev: torch.Tensor, cache: DecodeCache, slots: torch.Tensor) -> torch.Tensor:
        """Next-id logits ``[R, V]`` after feeding ``prev [R]``; BOS and padding are never generated."""
        t = cache.length - cache.layout.source_length
        logits = decode_linear(self.text_head, self._step(self.text_embed(prev) + slots[t], cache)).float()
        logits[:, [self.pad_id, self.bos_id]] = float("-inf")
        return logits

    def generate_text(
        self,
        codes: torch.Tensor,
        max_length: int = 32,
        *,
        method: Literal["greedy", "beam", "sample"] = "greedy",
        num_beams: int = 4,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        question_ids: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        length_penalty: float = 0.0,
    ) -> list[list[int]]:
        """Caption (or, with a question, answer) each image.

        Args:
            codes: ``Long[B, h, w]`` image codes (the source).
            max_length: most ids to generate per row, EOS included (≤ ``max_text_len``).
            method: ``"greedy"``, ``"beam"`` (``num_beams`` hypotheses) or ``"sample"``.
            temperature, top_k, top_p, generator: for ``"sample"``.
            question_ids, question_mask: VQA: ``[B, Lq]`` questions (BOS … EOS) as a second source.
            length_penalty: beam search ranks finished hypotheses by ``logP / len**length_penalty``.

        Returns:
            One id list per image, without BOS/EOS, stopped at EOS or ``max_length``.
        """
        if not 1 <= max_length <= self.max_text_len:
            raise ValueError(f"max_length must be in [1, max_text_len={self.max_text_len}], got {max_length}")
        if method not in ("greedy", "beam", "sample"):
            raise ValueError(f"method must be 'greedy', 'beam' or 'sample', got {method!r}")
        if method == "sample":
            check_sampling_args(temperature, top_k, top_p, self.text_vocab_size)
        if method == "beam" and num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        K = num_beams if method == "beam" else 1
        with self._inference():
            layout, x, pad = self._text_source(codes, question_ids, question_mask, max_length)
            B = codes.shape[0]
            rows = torch.arange(B, device=codes.device).repeat_interleave(K)
            cache = self.new_cache(B * K, layout, codes.device, self.text_head.weight.dtype)
            self._prefill(x, pad, cache, rows)
            slots = self.text_pos.weight[:max_length] + self.type_embed.weight[TEXT_TGT]
            if method == "beam":
                return self._beam_search(cache, slots, B, K, max_length, length_penalty)
            prev = torch.full((B,), self.bos_id, dtype=torch.long, device=codes.device)
            done = torch.zeros(B, dtype=torch.bool, device=codes.device)
            steps = []
            for _ in range(max_length):
                logits = self._text_logits(prev, cache, slots)
                prev = sample_next(
                    logits,
                    temperature=0.0 if method == "greedy" else temperature,
                    top_k=top_k,
                    top_p=top_p,
                    generator=generator,
                )
                prev = prev.masked_fill(done, self.eos_id)  # finished rows keep emitting EOS
                steps.append(prev)
                done |= prev == self.eos_id
                if bool(done.all()):
                    break
            return [self._strip(seq) for seq in torch.stack(steps, 1).tolist()]

    def _strip(self, seq: list[int]) -> list[int]:
        return seq[: seq.index(self.eos_id)] if self.eos_id in seq else seq

    def _beam_search(
        self, cache: DecodeCache, slots: torch.Tensor, B: int, K: int, max_length: int, length_penalty: float
    ) -> list[list[int]]:
        """Beam search; finished beams stay in the beam with their score frozen (extended by EOS at 0)."""
        device = slots.device
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all K rows start identical: expand only the first
        done = torch.zeros(B, K, dtype=torch.bool, device=device)
        seqs = torch.empty(B, K, 0, dtype=torch.long, device=device)
        lengths = torch.zeros(B, K, device=device)
        prev = torch.full((B * K,), self.bos_id, dtype=torch.long, device=device)
        V = self.text_vocab_size
        eos_only = torch.full((V,), float("-inf"), device=device)
        eos_only[self.eos_id] = 0.0
        base = torch.arange(B, device=device)[:, None] * K
        for _ in range(max_length):
            logp = self._text_logits(prev, cache, slots).log_softmax(-1).view(B, K, V)
            logp = torch.where(done[..., None], eos_only, logp)
            scores, flat = (scores[..., None] + logp).view(B, K * V).topk(K, dim=-1)  # [B, K]
            origin, token = flat // V, flat % V
            seqs = torch.cat([seqs.gather(1, origin[..., None].expand(-1, -1, seqs.shape[2])), token[..., None]], 2)
            was_done = done.gather(1, origin)
            lengths = lengths.gather(1, origin) + (~was_done).float()
            done = was_done | (token == self.eos_id)
            cache.reorder((base + origin).flatten())
            prev = token.flatten()
            if bool(done.all()):
                break
        ranked = scores / lengths.clamp(min=1) ** length_penalty
        best = ranked.argmax(-1)
        return [self._strip(seqs[b, int(best[b])].tolist()) for b in range(B)]
