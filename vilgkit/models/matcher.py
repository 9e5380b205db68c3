"""An image–text matching model: does this image (its codes or its pixels) show what this text says?

The paper reranks its best-of-60 candidates with an in-house image–text matching model (§4.2). This
is a small one, trained beside the generator on the same (codes, caption) pairs
(:class:`vilgkit.stages.train_matcher.TrainMatcher`) and used by ``MatcherReranker``
(``vilgkit_rerank``). It is a *cross*-encoder: text ids and image codes are read together by one
bidirectional transformer, and a learned score token is read out, so it can check which attribute
is bound to which object — a dual (CLIP-style) encoder compares two pooled vectors and is known to
miss exactly that.

The image side reads one of two inputs (``image_input``):

* ``"codes"``: the sampled codes, through the image tokenizer's own code vectors (a frozen table
  copied from ``ImageTokenizer.embed``, projected to the hidden width) plus a learned per-code
  residual, so codes rare in the training data still arrive with the tokenizer's geometry. Cheap (no
  decoding), but sampled codes are not codes the encoder produces (docs/performance.md, "Why
  candidates fail"), so the matcher scores inputs unlike its training data.
* ``"pixels"``: the decoded candidate ``[3, H, W]`` in [-1, 1], through a small strided convolution
  stem (stride 8: a 64-px image is an 8×8 grid of tokens). The candidates fail in their rendering
  (a shape drawn ambiguously, a stray blob), which is what the pixels show.

Dimension key: P pairs, L text length, h/w image-token grid, K codebook size, d code dimension,
C hidden, H/W pixels.
"""

from __future__ import annotations

import torch
from torch import nn

#: what the image side of a matcher reads
IMAGE_INPUTS = ("codes", "pixels")
#: the pixel stem's total stride: pixels per image token along each side
PIXEL_STRIDE = 8


class PixelStem(nn.Module):
    """Three stride-2 convolutions: ``[P, 3, H, W]`` in [-1, 1] → ``[P, C, H/8, W/8]``.

    Each is 4×4 with padding 1, so every token sees a 22-px window: enough to tell a circle from a
    square or a star at the Shapes sizes, where one 8-px linear patch would cut shapes in pieces.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        widths = [3, max(16, hidden_size // 4), max(32, hidden_size // 2), hidden_size]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, 4, stride=2, padding=1))
            if i < len(widths) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ImageTextMatcher(nn.Module):
    """Cross-encoder matching score ``s(text, codes)`` (a logit; higher = a better match).

    Args:
        text_vocab_size: number of text ids.
        code_table: ``[K, d]`` the image tokenizer's vector per code (frozen; saved with the weights);
            required for ``image_input="codes"``, unused (``None``) for ``"pixels"``.
        max_text_len: longest text row (BOS and EOS included).
        max_image_grid: longest side of the image-token grid (codes; or pixels / 8).
        hidden_size: C.
        num_layers: transformer layers.
        num_heads: attention heads (must divide C).
        pad_id: the text tokenizer's padding id (padding is masked out, whatever its id).
        image_input: ``"codes"`` or ``"pixels"`` (see the module docstring).
    """

    def __init__(
        self,
        text_vocab_size: int,
        code_table: torch.Tensor | None,
        max_text_len: int,
        max_image_grid: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        pad_id: int = 0,
        image_input: str = "codes",
    ) -> None:
        super().__init__()
        if image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {IMAGE_INPUTS}, got {image_input!r}")
        if image_input == "codes" and (code_table is None or code_table.dim() != 2):
            shape = None if code_table is None else tuple(code_table.shape)
            raise ValueError(f"a codes matcher needs code_table [codebook_size, code_dim], got {shape}")
        self.image_input = image_input
        self.text_vocab_size, self.pad_id = int(text_vocab_size), int(pad_id)
        self.max_text_len, self.max_image_grid = int(max_text_len), int(max_image_grid)
        self.hidden_size, self.num_layers, self.num_heads = int(hidden_size), int(num_layers), int(num_heads)
        self.text_embed = nn.Embedding(text_vocab_size, hidden_size)
        self.text_pos = nn.Embedding(max_text_len, hidden_size)
        if image_input == "codes":
            self.register_buffer("code_table", code_table.detach().float().clone())
            self.code_proj = nn.Linear(code_table.shape[1], hidden_size)
            self.code_residual = nn.Embedding(code_table.shape[0], hidden_size)
            nn.init.zeros_(self.code_residual.weight)  # start from the tokenizer's geometry alone
        else:
            self.pixel_stem = PixelStem(hidden_size)
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

    @property
    def reads_pixels(self) -> bool:
        """True when the image side reads decoded pixels (a reranker must decode the candidates)."""
        return self.image_input == "pixels"

    def config(self) -> dict[str, int | str]:
        """The constructor's arguments other than the code table (what ``matcher.json`` records)."""
        return {
            "text_vocab_size": self.text_vocab_size,
            "max_text_len": self.max_text_len,
            "max_image_grid": self.max_image_grid,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "pad_id": self.pad_id,
            "image_input": self.image_input,
        }

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Scores ``[P]`` for pairs ``text_ids/text_mask [P, L]`` × ``image``: codes ``Long[P, h, w]``
        or pixels ``[P, 3, H, W]`` in [-1, 1] (uint8 pixels are rescaled), as ``image_input`` says."""
        return self.score(text_ids, text_mask, self.image_tokens(image))

    def score(self, text_ids: torch.Tensor, text_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Scores ``[P]`` for pairs of texts × image tokens ``[P, h, w, C]`` from :meth:`image_tokens`
        (an image scored against several texts needs its tokens once: index or repeat them)."""
        pairs, length = text_ids.shape
        device = text_ids.device
        h, w = tokens.shape[1:3]
        if length > self.max_text_len or max(h, w) > self.max_image_grid:
            raise ValueError(
                f"text of {length} ids / a {h}x{w} image grid exceed the matcher's {self.max_text_len} ids / "
                f"{self.max_image_grid}x{self.max_image_grid} grid"
            )
        text = self.text_embed(text_ids) + self.text_pos(torch.arange(length, device=device)) + self.segment.weight[1]
        rows = torch.arange(h, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(h)
        image = tokens.reshape(pairs, h * w, -1) + self.row_pos(rows) + self.col_pos(cols) + self.segment.weight[2]
        score = self.score_token.expand(pairs, 1, -1) + self.segment.weight[0]
        stream = torch.cat([score, text, image], dim=1)
        keep = torch.cat(
            [
                torch.ones(pairs, 1, dtype=torch.bool, device=device),
                text_mask.bool(),
                torch.ones(pairs, h * w, dtype=torch.bool, device=device),
            ],
            dim=1,
        )
        out = self.encoder(stream, src_key_padding_mask=~keep)
        return self.head(self.norm(out[:, 0])).squeeze(-1).float()

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """``[P, h, w, C]`` image tokens before positions, from codes or pixels (see :meth:`forward`)."""
        if self.image_input == "codes":
            if image.dtype.is_floating_point or image.dim() != 3:
                raise ValueError(f"a codes matcher reads Long[P, h, w] codes, got {image.dtype} {tuple(image.shape)}")
            return self.code_proj(self.code_table[image]) + self.code_residual(image)
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"a pixels matcher reads [P, 3, H, W] images, got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            image = image.float() / 127.5 - 1.0
        return self.pixel_stem(image.to(self.text_embed.weight.dtype)).permute(0, 2, 3, 1)


def code_table_of(image_tokenizer: nn.Module) -> torch.Tensor:
    """``[K, d]``: the vector ``ImageTokenizer.embed`` gives each of its ``codebook_size`` codes."""
    size = int(image_tokenizer.codebook_size)
    device = next(image_tokenizer.parameters()).device
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        z = image_tokenizer.embed(torch.arange(size, device=device).view(1, 1, size))  # [1, d, 1, K]
    return z[0, :, 0, :].t().contiguous().float().cpu()
