"""An image–text matching model: does this grid of image codes show what this text says?

The paper reranks its best-of-60 candidates with an in-house image–text matching model (§4.2). This
is a small one, trained beside the generator on the same (codes, caption) pairs
(:class:`vilgkit.stages.train_matcher.TrainMatcher`) and used by ``MatcherReranker``
(``vilgkit_rerank``). It is a *cross*-encoder: text ids and image codes are read together by one
bidirectional transformer, and a learned score token is read out, so it can check which attribute
is bound to which object — a dual (CLIP-style) encoder compares two pooled vectors and is known to
miss exactly that.

Image codes enter through the image tokenizer's own code vectors (a frozen table copied from
``ImageTokenizer.embed``, projected to the hidden width) plus a learned per-code residual: codes
that are rare in the matcher's training data still arrive with the tokenizer's geometry.

Dimension key: P pairs, L text length, h/w code grid, K codebook size, d code dimension, C hidden.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageTextMatcher(nn.Module):
    """Cross-encoder matching score ``s(text, codes)`` (a logit; higher = a better match).

    Args:
        text_vocab_size: number of text ids.
        code_table: ``[K, d]`` the image tokenizer's vector per code (frozen; saved with the weights).
        max_text_len: longest text row (BOS and EOS included).
        max_image_grid: longest side of the code grid.
        hidden_size: C.
        num_layers: transformer layers.
        num_heads: attention heads (must divide C).
        pad_id: the text tokenizer's padding id (padding is masked out, whatever its id).
    """

    def __init__(
        self,
        text_vocab_size: int,
        code_table: torch.Tensor,
        max_text_len: int,
        max_image_grid: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if code_table.dim() != 2:
            raise ValueError(f"code_table must be [codebook_size, code_dim], got {tuple(code_table.shape)}")
        self.text_vocab_size, self.pad_id = int(text_vocab_size), int(pad_id)
        self.max_text_len, self.max_image_grid = int(max_text_len), int(max_image_grid)
        self.hidden_size, self.num_layers, self.num_heads = int(hidden_size), int(num_layers), int(num_heads)
        self.register_buffer("code_table", code_table.detach().float().clone())
        self.text_embed = nn.Embedding(text_vocab_size, hidden_size)
        self.text_pos = nn.Embedding(max_text_len, hidden_size)
        self.code_proj = nn.Linear(code_table.shape[1], hidden_size)
        self.code_residual = nn.Embedding(code_table.shape[0], hidden_size)
        nn.init.zeros_(self.code_residual.weight)  # start from the tokenizer's geometry alone
        self.row_pos = nn.Embedding(max_image_grid, hidden_size)
        self.col_pos = nn.Embedding(max_image_grid, hidden_size)
        self.segment = nn.Embedding(3, hidden_size)  # score token, text, image
        self.score_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, 4 * hidden_size, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, 1)

    @property
    def codebook_size(self) -> int:
        return int(self.code_table.shape[0])

    def config(self) -> dict[str, int]:
        """The constructor's arguments other than the code table (what ``matcher.json`` records)."""
        return {
            "text_vocab_size": self.text_vocab_size,
            "max_text_len": self.max_text_len,
            "max_image_grid": self.max_image_grid,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "pad_id": self.pad_id,
        }

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Scores ``[P]`` for pairs ``text_ids/text_mask [P, L]`` × ``codes [P, h, w]``."""
        pairs, length = text_ids.shape
        h, w = codes.shape[-2:]
        if length > self.max_text_len or max(h, w) > self.max_image_grid:
            raise ValueError(
                f"text of {length} ids / a {h}x{w} grid exceed the matcher's {self.max_text_len} ids / "
                f"{self.max_image_grid}x{self.max_image_grid} grid"
            )
        device = text_ids.device
        text = self.text_embed(text_ids) + self.text_pos(torch.arange(length, device=device)) + self.segment.weight[1]
        flat = codes.reshape(pairs, h * w)
        rows = torch.arange(h, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(h)
        image = (
            self.code_proj(self.code_table[flat])
            + self.code_residual(flat)
            + self.row_pos(rows)
            + self.col_pos(cols)
            + self.segment.weight[2]
        )
        score = self.score_token.expand(pairs, 1, -1) + self.segment.weight[0]
        stream = torch.cat([score, text, image], dim=1)
        keep = torch.cat(
            [
                torch.ones(pairs, 1, dtype=torch.bool, device=device),
                text_mask.bool(),
                torch.ones_like(flat, dtype=torch.bool),
            ],
            dim=1,
        )
        out = self.encoder(stream, src_key_padding_mask=~keep)
        return self.head(self.norm(out[:, 0])).squeeze(-1).float()


def code_table_of(image_tokenizer: nn.Module) -> torch.Tensor:
    """``[K, d]``: the vector ``ImageTokenizer.embed`` gives each of its ``codebook_size`` codes."""
    size = int(image_tokenizer.codebook_size)
    device = next(image_tokenizer.parameters()).device
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        z = image_tokenizer.embed(torch.arange(size, device=device).view(1, 1, size))  # [1, d, 1, K]
    return z[0, :, 0, :].t().contiguous().float().cpu()
