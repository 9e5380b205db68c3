"""Block-wise sparse attention for training on CPU (and anywhere FlexAttention is unavailable).

Only what the pattern allows is computed:

* text queries (any segment that is not the image) are few: one SDPA call over all keys with the
  oracle mask's rows for those queries;
* image queries are grouped into *tiles* that share their image keys: one image row (``row``), one
  image column on the transposed grid (``column``), or a ``t x t`` patch of the grid whose keys are
  the patch plus a ``kernel // 2`` halo (``conv``, keys from unfolded windows). Every image query also
  sees the same *context* keys: the source text (caption or VQA question). Scores against the
  context and against the tile's keys share one softmax.

Everything is ordinary differentiable tensor code, so autograd provides the backward pass.

Dimension key: B batch, H heads, N sequence length, D head dim, n image positions (h*w),
T tiles, Q queries per tile, K image keys per tile, S context (source text) keys.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import rearrange

from vilgkit.layout import Layout
from vilgkit_attention.masks import build_allowed, image_segment



def _divisor_at_most(size: int, limit: int) -> int:
    """Largest divisor of ``size`` that is ``<= limit`` (tiles must cover the grid exactly)."""
    return max(d for d in range(1, min(size, limit) + 1) if size % d == 0)


def conv_tile_shape(h: int, w: int, conv_tile: int) -> tuple[int, int]:
    """Rows and columns of one conv tile: divisors of the grid, at most ``conv_tile``."""
    return _divisor_at_most(h, conv_tile), _divisor_at_most(w, conv_tile)


@lru_cache(maxsize=128)
def _segments(layout: Layout) -> tuple[tuple[slice, ...], tuple[slice, ...], slice]:
    """``(context slices, text-query slices, image slice)`` as position ranges."""
    img_off, h, w, img_is_target = image_segment(layout)
    n, src, total = h * w, layout.source_length, layout.length
    img = slice(img_off, img_off + n)
    before, after = slice(0, img_off), slice(img_off + n, total)
    text_queries = tuple(s for s in (before, after) if s.stop > s.start)
    if img_is_target:
        context = (slice(0, src),)
    else:  # source text around the source image (e.g. the VQA question after it)
        context = tuple(s for s in (before, slice(img_off + n, src)) if s.stop > s.start)
    return context, text_queries, img


def _cat_positions(x: torch.Tensor, slices: tuple[slice, ...], dim: int) -> torch.Tensor:
    parts = [x.narrow(dim, s.start, s.stop - s.start) for s in slices]
    if not parts:  # e.g. image->text: a source image query sees no text at all
        return x.narrow(dim, 0, 0)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


@lru_cache(maxsize=128)
def _tile_mask_cpu(layout: Layout, kind: str, kernel_size: int, conv_tile: int, lines_per_tile: int) -> torch.Tensor:
    """Static Bool ``[T, Q, K]``: which tile keys each tile query may see (grid bounds, causality)."""
    _, h, w, causal = image_segment(layout)
    if kind in ("row", "column"):
        length, lines = (w, h) if kind == "row" else (h, w)
        group = _divisor_at_most(lines, lines_per_tile)
        m = torch.ones(length, length, dtype=torch.bool)
        # A raster-order causal mask restricted to one row or one column is lower-triangular in
        # the position along that row or column; a tile of several lines is block-diagonal.
        m = torch.block_diag(*[m.tril() if causal else m] * group)
        return m.expand(lines // group, group * length, group * length).contiguous()
    if kind != "conv":
        raise ValueError(f"no block-wise kernel for image kind {kind!r}")
    p = kernel_size // 2
    tr, tc = conv_tile_shape(h, w, conv_tile)
    # Query grid coordinates per tile, and key grid coordinates of its (tile + halo) window.
    ti, tj = torch.meshgrid(torch.arange(h // tr), torch.arange(w // tc), indexing="ij")
    ti, tj = ti.reshape(-1, 1), tj.reshape(-1, 1)  # [T, 1]
    a, b = torch.meshgrid(torch.arange(tr), torch.arange(tc), indexing="ij")
    qr, qc = ti * tr + a.reshape(1, -1), tj * tc + b.reshape(1, -1)  # [T, Q]
    a, b = torch.meshgrid(torch.arange(tr + 2 * p), torch.arange(tc + 2 * p), indexing="ij")
    kr, kc = ti * tr + a.reshape(1, -1) - p, tj * tc + b.reshape(1, -1) - p  # [T, K]
    inside = ((kr >= 0) & (kr < h) & (kc >= 0) & (kc < w))[:, None, :]
    near = ((qr[:, :, None] - kr[:, None, :]).abs() <= p) & ((qc[:, :, None] - kc[:, None, :]).abs() <= p)
    m = inside & near
    if causal:
        m &= (kr * w + kc)[:, None, :] <= (qr * w + qc)[:, :, None]
    return m


_TILE_MASK_DEVICE: dict[tuple, torch.Tensor] = {}


def tile_mask(
    layout: Layout, kind: str, kernel_size: int, conv_tile: int, lines_per_tile: int, device: torch.device
) -> torch.Tensor:
    """:func:`_tile_mask_cpu` cached per device."""
    conv = kind == "conv"
    key = (layout, kind, kernel_size if conv else 0, conv_tile if conv else 0, 0 if conv else lines_per_tile, str(device))
    if key not in _TILE_MASK_DEVICE:
        if len(_TILE_MASK_DEVICE) > 256:
            _TILE_MASK_DEVICE.clear()
        _TILE_MASK_DEVICE[key] = _tile_mask_cpu(layout, kind, *key[2:5]).to(device)
    return _TILE_MASK_DEVICE[key]


def to_tiles(
    x: torch.Tensor, kind: str, h: int, w: int, halo: int = 0, conv_tile: int = 8, lines_per_tile: int = 1
) -> torch.Tensor:
    """Group image positions ``[..., n, D]`` (or a padding mask ``[B, n]``) into ``[..., T, Q|K, D]``.

    For ``conv`` with ``halo > 0`` the result holds each tile's key window (tile plus halo, out of
    the grid zero-filled); with ``halo == 0`` it holds the tile's queries.
    """
    is_mask = x.dim() == 2  # [B, n] -> handled with a dummy feature dimension
    if is_mask:
        x = x[..., None]
    grid = x.unflatten(-2, (h, w))  # [..., h, w, D]
    if kind in ("row", "column"):
        lines = grid if kind == "row" else grid.transpose(-3, -2)  # [..., lines, length, D]
        group = _divisor_at_most(lines.shape[-3], lines_per_tile)
        out = rearrange(lines, "... (t g) l d -> ... t (g l) d", g=group)
    else:
        tr, tc = conv_tile_shape(h, w, conv_tile)
        if halo == 0:
            out = rearrange(grid, "... (i r) (j c) d -> ... (i j) (r c) d", r=tr, c=tc)
            return out[..., 0] if is_mask else out
        padded = F.pad(grid, (0, 0, halo, halo, halo, halo))  # pad w and h by the halo
        win = padded.unfold(-3, tr + 2 * halo, tr).unfold(-3, tc + 2 * halo, tc)  # [..., i, j, d, r, c]
        out = rearrange(win, "... i j d r c -> ... (i j) (r c) d")
        return out[..., 0] if is_mask else out
    return out[..., 0] if is_mask else out


def from_tiles(x: torch.Tensor, kind: str, h: int, w: int, conv_tile: int = 8) -> torch.Tensor:
    """Inverse of :func:`to_tiles` for queries: ``[B, H, T, Q, D] -> [B, H, n, D]``."""
    if kind == "row":
        return x.flatten(2, 3)
    if kind == "column":
        return x.flatten(2, 3).unflatten(2, (w, h)).transpose(2, 3).flatten(2, 3)
    tr, tc = conv_tile_shape(h, w, conv_tile)
    return rearrange(x, "b h (i j) (r c) d -> b h (i r j c) d", i=h // tr, r=tr, c=tc)


def tile_attention(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    mask_t: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    ctx_keep: torch.Tensor | None,
) -> torch.Tensor:
    """Attention of tile queries over (shared context keys + their tile's keys), one softmax.

    Tiles become batch entries of one fused SDPA call: each tile's keys are the context followed
    by its own image keys. Copying the (short) context into every tile costs less than the
    materialised scores and softmax of a hand-written kernel, and SDPA's fused CPU kernel does not
    store probabilities for backward.

    Args:
        q_t: ``[B, H, T, Q, D]``; k_t, v_t: ``[B, H, T, K, D]``.
        mask_t: Bool ``[T, Q, K]`` or ``[B, 1, T, Q, K]``, True where the tile key is visible.
        k_ctx, v_ctx: ``[B, H, S, D]`` context keys seen by every image query.
        ctx_keep: Bool ``[B, S]`` (False = padding) or ``None``.

    Returns:
        ``[B, H, T, Q, D]``.
    """
    b, h, t, q, d = q_t.shape
    s = k_ctx.shape[2]
    q_b = rearrange(q_t, "b h t q d -> (b t) h q d")
    k_b = rearrange(torch.cat([k_ctx[:, :, None].expand(b, h, t, s, d), k_t], dim=3), "b h t k d -> (b t) h k d")
    v_b = rearrange(torch.cat([v_ctx[:, :, None].expand(b, h, t, s, d), v_t], dim=3), "b h t k d -> (b t) h k d")
    if mask_t.dim() == 3:
        mask_t = mask_t[None, None]
    ctx = torch.ones(1, s, dtype=torch.bool, device=q_t.device) if ctx_keep is None else ctx_keep
    ctx = ctx[:, None, None, None, :]  # [B|1, 1, 1, 1, S]
    shape = torch.broadcast_shapes(ctx.shape[:-1], mask_t.shape[:-1], (1, 1, t, q))
    mask = torch.cat([ctx.expand(*shape, s), mask_t.expand(*shape, mask_t.shape[-1])], dim=-1)
    mask = rearrange(mask.expand(b, *mask.shape[1:]), "b one t q k -> (b t) one q k")
    out = F.scaled_dot_product_attention(q_b, k_b, v_b, attn_mask=mask)
    return rearrange(out, "(b t) h q d -> b h t q d", b=b)


def blockwise_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    layout: Layout,
    kind: str,
    kernel_size: int,
    key_padding_mask: torch.Tensor | None,
    conv_tile: int = 8,
    lines_per_tile: int = 1,
) -> torch.Tensor:
    """Sparse attention equal to SDPA with the oracle mask, computing only allowed blocks.

    Args:
        q, k, v: ``[B, H, N, D]``.
        kind: ``"row"``, ``"column"`` or ``"conv"`` (``"dense"`` goes to SDPA).
        conv_tile: conv queries are tiled in patches of at most this many rows and columns.
        lines_per_tile: row / column layers put this many image rows / columns in one tile
            (a block-diagonal mask inside it), trading a little wasted compute for fewer copies
            of the context keys and bigger, more efficient kernel calls.
        key_padding_mask: Bool ``[B, N]``, True = padding.

    Returns:
        ``[B, H, N, D]``.
    """
    allowed = build_allowed(layout, kind, kernel_size, device=q.device)
    if kind == "dense":
        from vilgkit_attention.dense import masked_sdpa

        return masked_sdpa(q, k, v, allowed, key_padding_mask)
    context, text_q, img = _segments(layout)
    _, h, w, _ = image_segment(layout)
    keep = None if key_padding_mask is None else ~key_padding_mask

    # Text queries: few rows, all keys, oracle mask rows.
    q_txt = _cat_positions(q, text_q, 2)
    rows = _cat_positions(allowed, text_q, 0)  # [Nt, N]
    mask_txt = rows if keep is None else rows[None, None] & keep[:, None, None, :]
    out_txt = F.scaled_dot_product_attention(q_txt, k, v, attn_mask=mask_txt)

    # Image queries: tiles sharing keys, plus the context keys.
    k_ctx, v_ctx = _cat_positions(k, context, 2), _cat_positions(v, context, 2)
    ctx_keep = None if keep is None else _cat_positions(keep, context, 1)
    halo = kernel_size // 2 if kind == "conv" else 0
    q_img, k_img, v_img = (x[:, :, img] for x in (q, k, v))
    q_t, k_t, v_t = (to_tiles(x, kind, h, w, hl, conv_tile, lines_per_tile)
                     for x, hl in ((q_img, 0), (k_img, halo), (v_img, halo)))
    mask_t = tile_mask(layout, kind, kernel_size, conv_tile, lines_per_tile, q.device)
    if keep is not None and not bool(keep[:, img].all()):
        keep_t = to_tiles(keep[:, img], kind, h, w, halo, conv_tile, lines_per_tile)
        mask_t = mask_t[None, None] & keep_t[:, None, :, None, :]
    out_img = from_tiles(tile_attention(q_t, k_t, v_t, mask_t, k_ctx, v_ctx, ctx_keep), kind, h, w, conv_tile)
    return _assemble(out_txt, out_img, text_q, img)


def _assemble(out_txt: torch.Tensor, out_img: torch.Tensor, text_q: tuple[slice, ...], img: slice) -> torch.Tensor:
    """Reassemble in position order: [text before image] [image] [text after image]."""
    pieces, t0 = [], 0
    for s in text_q:
        if s.start < img.start:
            pieces.append(out_txt[:, :, t0 : t0 + s.stop - s.start])
            t0 += s.stop - s.start
    pieces.append(out_img)
    for s in text_q:
        if s.start >= img.stop:
            pieces.append(out_txt[:, :, t0 : t0 + s.stop - s.start])
            t0 += s.stop - s.start
    return torch.cat(pieces, dim=2)
