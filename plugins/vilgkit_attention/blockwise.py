"""Block-wise sparse attention for training on CPU (and anywhere FlexAttention is unavailable).

Only what the pattern allows is computed, with a hand-written forward *and* backward:

* image queries are grouped into *tiles* that share their image keys: ``lines_per_tile`` image rows
  (``row``), the same on the transposed grid (``column``), or a ``rows x cols`` patch of the grid
  (``conv``) whose keys are the window the kernel reaches from the patch (above it only, when the
  image is causal). Every image query also sees the same *context* keys (the source text: caption or
  VQA question). Context scores are one large matrix product over all image queries, never copied
  into the tiles; the two score blocks share one softmax (a common maximum and normaliser);
* text queries (few) attend the shortest key prefix that holds every key their oracle rows allow.

:class:`_SparseAttentionFn` stores only q, k, v and the log-sum-exp of every query row (``recompute``:
the probabilities are recomputed from it in backward, no extra forward pass, as fused kernels do),
or additionally the probabilities (``recompute=False``: faster backward, more memory).

Dimension key: B batch, H heads, N sequence length, D head dim, n image positions (h*w),
T tiles, Q queries per tile, K image keys per tile, S context (source text) keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from vilgkit.layout import Layout
from vilgkit_attention.masks import SparseMask, build_allowed, image_segment


def _divisor_at_most(size: int, limit: int) -> int:
    """Largest divisor of ``size`` that is ``<= limit`` (tiles must cover the grid exactly)."""
    return max(d for d in range(1, min(size, limit) + 1) if size % d == 0)


def conv_tile_shape(h: int, w: int, conv_tile: int | tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of one conv query tile: divisors of the grid, at most ``conv_tile``."""
    tr, tc = (conv_tile, conv_tile) if isinstance(conv_tile, int) else conv_tile
    return _divisor_at_most(h, tr), _divisor_at_most(w, tc)


@dataclass(frozen=True)
class TilePlan:
    """Static index plan of one (layout, kind, kernel, tiling) on one device.

    Attributes:
        text_q: slices of the text-query positions; ``text_keys``: their key prefix length.
        text_allow: Bool ``[Nt, text_keys]`` oracle rows of the text queries.
        context: slices of the context keys every image query sees.
        img: slice of the image positions.
        q_order: ``Long[n]`` image positions in tile order, or ``None`` for raster order.
        key_index: ``Long[T, K]`` image position of every tile key, or ``None`` when a tile's keys
            are its own queries (row / column layers). Out-of-grid keys point at position 0 and are
            masked.
        tile_allow: Bool ``[T, Q, K]``; ``tile_bias``: the same as 0 / -inf.
    """

    text_q: tuple[slice, ...]
    text_keys: int
    text_allow: torch.Tensor
    context: tuple[slice, ...]
    img: slice
    q_order: torch.Tensor | None
    key_index: torch.Tensor | None
    tile_allow: torch.Tensor
    tile_bias: torch.Tensor

    def to(self, device: torch.device) -> TilePlan:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TilePlan(
            self.text_q,
            self.text_keys,
            move(self.text_allow),
            self.context,
            self.img,
            move(self.q_order),
            move(self.key_index),
            move(self.tile_allow),
            move(self.tile_bias),
        )

    def score_entries(self) -> int:
        """Query-key products computed per (batch, head): text prefix + context + tiles."""
        nt = sum(s.stop - s.start for s in self.text_q)
        n, (t, q, k) = self.img.stop - self.img.start, self.tile_allow.shape
        s = sum(c.stop - c.start for c in self.context)
        return nt * self.text_keys + n * s + t * q * k


def _line_tiles(h: int, w: int, kind: str, causal: bool, lines_per_tile: int):
    """Row (column) tiles of ``g`` image rows (columns); keys = the tile's own positions."""
    length, lines = (w, h) if kind == "row" else (h, w)
    g = _divisor_at_most(lines, lines_per_tile)
    m = torch.ones(length, length, dtype=torch.bool)
    m = torch.block_diag(*[m.tril() if causal else m] * g)  # causal along a line = raster causal
    allow = m.expand(lines // g, g * length, g * length).contiguous()
    order = None if kind == "row" else torch.arange(h * w).reshape(h, w).t().reshape(-1)
    return order, None, allow


def _conv_tiles(h: int, w: int, p: int, causal: bool, conv_tile):
    """``tr x tc`` query patches; keys: rows ``r0-p .. r1 (+p)``, columns ``c0-p .. c1+p`` (or all)."""
    tr, tc = conv_tile_shape(h, w, conv_tile)
    ti, tj = torch.meshgrid(torch.arange(h // tr), torch.arange(w // tc), indexing="ij")
    ti, tj = ti.reshape(-1, 1), tj.reshape(-1, 1)  # [T, 1]
    a, b = torch.meshgrid(torch.arange(tr), torch.arange(tc), indexing="ij")
    qr, qc = ti * tr + a.reshape(1, -1), tj * tc + b.reshape(1, -1)  # [T, Q]
    k_rows = tr + p + (0 if causal else p)  # a causal query never sees the rows below it
    whole_width = tc + 2 * p >= w
    k_cols = w if whole_width else tc + 2 * p
    a, b = torch.meshgrid(torch.arange(k_rows), torch.arange(k_cols), indexing="ij")
    kr = ti * tr - p + a.reshape(1, -1)
    kc = b.reshape(1, -1).expand_as(kr) if whole_width else tj * tc - p + b.reshape(1, -1)  # [T, K]
    inside = (kr >= 0) & (kr < h) & (kc >= 0) & (kc < w)
    near = ((qr[:, :, None] - kr[:, None, :]).abs() <= p) & ((qc[:, :, None] - kc[:, None, :]).abs() <= p)
    allow = inside[:, None, :] & near
    if causal:
        allow &= (kr * w + kc)[:, None, :] <= (qr * w + qc)[:, :, None]
    order = None if tc == w else (qr * w + qc).reshape(-1)
    return order, torch.where(inside, kr * w + kc, 0), allow


@lru_cache(maxsize=128)
def _plan_cpu(layout: Layout, kind: str, kernel_size: int, conv_tile, lines_per_tile: int) -> TilePlan:
    img_off, h, w, causal = image_segment(layout)
    n, src, total = h * w, layout.source_length, layout.length
    img = slice(img_off, img_off + n)
    text_q = tuple(s for s in (slice(0, img_off), slice(img_off + n, total)) if s.stop > s.start)
    if causal:
        context = (slice(0, src),) if src else ()
    else:  # source text around the source image (e.g. the VQA question after it)
        context = tuple(s for s in (slice(0, img_off), slice(img_off + n, src)) if s.stop > s.start)
    allowed = build_allowed(layout, kind, kernel_size)
    rows = torch.cat([allowed[s] for s in text_q]) if text_q else allowed[:0]
    cols = rows.any(0).nonzero()
    text_keys = int(cols.max()) + 1 if len(cols) else 1
    if kind == "conv":
        order, key_index, allow = _conv_tiles(h, w, kernel_size // 2, causal, conv_tile)
    elif kind in ("row", "column"):
        order, key_index, allow = _line_tiles(h, w, kind, causal, lines_per_tile)
    else:
        raise ValueError(f"no block-wise kernel for image kind {kind!r}")
    bias = torch.zeros(allow.shape).masked_fill_(~allow, float("-inf"))
    return TilePlan(text_q, text_keys, rows[:, :text_keys].contiguous(), context, img, order, key_index, allow, bias)


_PLANS: dict[tuple, TilePlan] = {}
CHUNK_SCORES = 1 << 20  # floats per score-sized temporary (4 MB in fp32)


def tile_plan(
    layout: Layout, kind: str, kernel_size: int, conv_tile, lines_per_tile: int, device: torch.device | str = "cpu"
) -> TilePlan:
    """:class:`TilePlan` cached per device (only the arguments that matter for ``kind`` are keys)."""
    conv = kind == "conv"
    tile = conv_tile_shape(*image_segment(layout)[1:3], conv_tile) if conv else None
    key = (layout, kind, kernel_size if conv else 0, tile, 0 if conv else lines_per_tile, str(torch.device(device)))
    if key not in _PLANS:
        if len(_PLANS) > 256:
            _PLANS.clear()
        _PLANS[key] = _plan_cpu(*key[:5]).to(torch.device(device))
    return _PLANS[key]


# ----------------------------------------------------------------------------- the math
def _scores(qt, kt, bias_t, kc, bias_c):
    """Scaled scores: tiles ``[B,H,T,Q,K]`` and context ``[B,H,T,Q,S]`` (or ``None``)."""
    s_t = torch.matmul(qt, kt.mT).add_(bias_t)
    s_c = None
    if kc is not None:
        b, h, t, q, d = qt.shape
        s_c = torch.matmul(qt.view(b, h, t * q, d), kc.mT).view(b, h, t, q, -1)
        if bias_c is not None:
            s_c.add_(bias_c)
    return s_t, s_c


def _forward(qt, kt, vt, bias_t, kc, vc, bias_c, keep_probs: bool):
    """Softmax attention over (context + tile keys). Returns ``out [B,H,T,Q,D]``, ``lse [B,H,T,Q]``
    and, with ``keep_probs``, the normalised probabilities."""
    s_t, s_c = _scores(qt, kt, bias_t, kc, bias_c)
    m = s_t.amax(-1)
    if s_c is not None:
        m = torch.maximum(m, s_c.amax(-1))
    p_t = s_t.sub_(m[..., None]).exp_()
    denom = p_t.sum(-1)
    out = torch.matmul(p_t, vt)
    if s_c is not None:
        p_c = s_c.sub_(m[..., None]).exp_()
        denom += p_c.sum(-1)
        b, h, t, q, d = out.shape
        out.view(b, h, t * q, d).add_(torch.matmul(p_c.view(b, h, t * q, -1), vc))
    else:
        p_c = None
    out.div_(denom[..., None])
    lse = m + denom.log()
    probs = None
    if keep_probs:
        inv = denom.reciprocal()[..., None]
        probs = (p_t.mul_(inv), None if p_c is None else p_c.mul_(inv))
    return out, lse, probs


def _backward(qt, kt, vt, bias_t, kc, vc, bias_c, lse, dout, probs, scale: float):
    """Gradients of :func:`_forward` w.r.t. ``qt`` (unscaled q), tile and context keys / values."""
    if probs is None:  # recompute the probabilities from the stored log-sum-exp
        s_t, s_c = _scores(qt, kt, bias_t, kc, bias_c)
        p_t = s_t.sub_(lse[..., None]).exp_()
        p_c = None if s_c is None else s_c.sub_(lse[..., None]).exp_()
    else:
        p_t, p_c = probs
    b, h, t, q, d = dout.shape
    # dS = P * (dP - delta) with delta = rowsum(P * dP) (= rowsum(dout * out), without storing out),
    # computed in place as P*dP - P*delta
    ds_t = torch.matmul(dout, vt.mT).mul_(p_t)
    delta = ds_t.sum(-1, keepdim=True)
    if p_c is not None:
        ds_c = torch.matmul(dout.view(b, h, t * q, d), vc.mT).view(b, h, t, q, -1).mul_(p_c)
        delta += ds_c.sum(-1, keepdim=True)
        ds_c.addcmul_(p_c, delta, value=-1)
    ds_t.addcmul_(p_t, delta, value=-1)
    dq = torch.matmul(ds_t, kt)
    dk_t = torch.matmul(ds_t.mT, qt)
    dv_t = torch.matmul(p_t.mT, dout)
    dk_c = dv_c = None
    if p_c is not None:
        ds_c = ds_c.view(b, h, t * q, -1)
        dq.view(b, h, t * q, d).add_(torch.matmul(ds_c, kc))
        dk_c = torch.matmul(ds_c.mT, qt.view(b, h, t * q, d))
        dv_c = torch.matmul(p_c.view(b, h, t * q, -1).mT, dout.view(b, h, t * q, d))
    return dq.mul_(scale), dk_t, dv_t, dk_c, dv_c


# ----------------------------------------------------------------------------- gathering
def _pick(x: torch.Tensor, slices: tuple[slice, ...], dim: int) -> torch.Tensor:
    parts = [x.narrow(dim, s.start, s.stop - s.start) for s in slices]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _put(dst: torch.Tensor, src: torch.Tensor, slices: tuple[slice, ...]) -> None:
    """``dst[:, :, slices] += src`` with ``src`` holding the slices one after another."""
    t0 = 0
    for s in slices:
        dst[:, :, s].add_(src[:, :, t0 : t0 + s.stop - s.start])
        t0 += s.stop - s.start


def _neg_inf_where_not(keep: torch.Tensor) -> torch.Tensor:
    return torch.zeros(keep.shape, device=keep.device).masked_fill_(~keep, float("-inf"))


class _Inputs:
    """Tile-ordered operands of both query groups, built from (q, k, v) and the plan."""

    def __init__(self, q, k, v, plan: TilePlan, keep: torch.Tensor | None) -> None:
        b, h, _, d = q.shape
        self.scale = 1.0 / math.sqrt(d)
        n = plan.img.stop - plan.img.start
        t, qn, kn = plan.tile_allow.shape
        # image queries and their tile keys
        q_img, k_img, v_img = (x[:, :, plan.img] for x in (q, k, v))
        if plan.q_order is not None:
            q_img = q_img.index_select(2, plan.q_order)
        self.qt = torch.mul(q_img, self.scale).contiguous().view(b, h, t, qn, d)
        self.plan = plan
        if plan.key_index is None:  # a tile's keys are its own queries: one reordered copy
            pick = (lambda x: x.contiguous()) if plan.q_order is None else (lambda x: x.index_select(2, plan.q_order))
            self.k_img, self.v_img = (pick(x).view(b, h, t, kn, d) for x in (k_img, v_img))
        else:  # overlapping windows: gathered per chunk of tiles
            self.k_img, self.v_img = k_img, v_img
        self.bias_t = plan.tile_bias
        if keep is not None and not bool(keep[:, plan.img].all()):  # padded image keys (rare)
            keep_img = keep[:, plan.img]
            keep_img = (
                keep_img[:, plan.key_index]
                if plan.key_index is not None
                else (keep_img if plan.q_order is None else keep_img[:, plan.q_order]).view(b, t, kn)
            )
            self.bias_t = self.bias_t + _neg_inf_where_not(keep_img)[:, None, :, None, :]
        self.kc = self.vc = self.bias_c = None
        if plan.context:
            self.kc, self.vc = (_pick(x, plan.context, 2).contiguous() for x in (k, v))
            if keep is not None:
                self.bias_c = _neg_inf_where_not(_pick(keep, plan.context, 1))[:, None, None, None, :]
        # text queries: the key prefix their oracle rows need
        self.has_text = bool(plan.text_q)
        if self.has_text:
            nk = plan.text_keys
            self.qx = torch.mul(_pick(q, plan.text_q, 2), self.scale).unsqueeze(2)  # [B,H,1,Nt,D]
            self.kx, self.vx = (x[:, :, None, :nk] for x in (k, v))
            allow = plan.text_allow[None, None, None]
            if keep is not None:
                allow = allow & keep[:, None, None, None, :nk]
            self.bias_x = _neg_inf_where_not(allow)
        self.n, self.shape = n, (b, h, t, qn, d)
        # chunks of tiles keep the score-sized temporaries near CHUNK_SCORES floats (cache, peak memory)
        per_tile = b * h * qn * (kn + sum(c.stop - c.start for c in plan.context))
        step = max(1, CHUNK_SCORES // per_tile)
        self.chunks = [(t0, min(t0 + step, t)) for t0 in range(0, t, step)]

    def tiles(self, t0: int, t1: int):
        """``(qt, kt, vt, bias_t)`` of tiles ``t0:t1``."""
        b, h, _, qn, d = self.shape
        if self.plan.key_index is None:
            kt, vt = self.k_img[:, :, t0:t1], self.v_img[:, :, t0:t1]
        else:
            idx = self.plan.key_index[t0:t1].flatten()
            kt, vt = (x.index_select(2, idx).view(b, h, t1 - t0, -1, d) for x in (self.k_img, self.v_img))
        return self.qt[:, :, t0:t1], kt, vt, self.bias_t[..., t0:t1, :, :]

    def key_positions(self, t0: int, t1: int) -> torch.Tensor | slice:
        """Image positions of the keys of tiles ``t0:t1`` (flattened), for scattering gradients."""
        plan, qn = self.plan, self.shape[3]
        if plan.key_index is not None:
            return plan.key_index[t0:t1].flatten()
        return slice(t0 * qn, t1 * qn) if plan.q_order is None else plan.q_order[t0 * qn : t1 * qn]


def _assemble(plan: TilePlan, out_img, out_txt, like: torch.Tensor) -> torch.Tensor:
    b, h, n_total, d = like.shape
    out = like.new_empty(b, h, n_total, d)
    out_img = out_img.view(b, h, -1, d)
    if plan.q_order is None:
        out[:, :, plan.img] = out_img
    else:
        out[:, :, plan.img].index_copy_(2, plan.q_order, out_img)
    if out_txt is not None:
        t0 = 0
        for s in plan.text_q:
            out[:, :, s] = out_txt[:, :, 0, t0 : t0 + s.stop - s.start]
            t0 += s.stop - s.start
    return out


def _run_forward(x: _Inputs, plan: TilePlan, like: torch.Tensor, keep_probs: bool):
    parts = [_forward(*x.tiles(t0, t1), x.kc, x.vc, x.bias_c, keep_probs) for t0, t1 in x.chunks]
    cat = lambda ts: ts[0] if len(ts) == 1 else torch.cat(ts, 2)  # noqa: E731
    out_i, lse_i = cat([p[0] for p in parts]), cat([p[1] for p in parts])
    probs_i = None
    if keep_probs:
        probs_i = (cat([p[2][0] for p in parts]), None if x.kc is None else cat([p[2][1] for p in parts]))
    out_x = lse_x = probs_x = None
    if x.has_text:
        out_x, lse_x, probs_x = _forward(x.qx, x.kx, x.vx, x.bias_x, None, None, None, keep_probs)
    return _assemble(plan, out_i, out_x, like), (lse_i, lse_x), (probs_i, probs_x)


class _SparseAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan, keep, keep_probs):
        x = _Inputs(q, k, v, plan, keep)
        out, lses, probs = _run_forward(x, plan, q, keep_probs)
        ctx.plan, ctx.keep_probs = plan, keep_probs
        flat = [p for part in probs for p in (part if part is not None else (None, None))]
        ctx.save_for_backward(q, k, v, keep, *lses, *flat)  # probabilities: None unless keep_probs
        return out

    @staticmethod
    def backward(ctx, dout):
        with _no_autocast(dout.device):  # a backward called inside an autocast region stays fp32 too
            return _SparseAttentionFn._backward(ctx, dout)

    @staticmethod
    def _backward(ctx, dout):
        q, k, v, keep, lse_i, lse_x, *flat = ctx.saved_tensors
        plan = ctx.plan
        x = _Inputs(q, k, v, plan, keep)
        b, h, t, qn, d = x.shape
        dq, dk, dv = (torch.zeros(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
        d_img = dout[:, :, plan.img]
        d_img = (d_img if plan.q_order is None else d_img.index_select(2, plan.q_order)).contiguous()
        probs_i, probs_x = ((flat[0], flat[1]), (flat[2], flat[3])) if ctx.keep_probs else ((None, None), None)
        d_img = d_img.view(b, h, t, qn, d)
        gq = torch.empty_like(d_img)
        for t0, t1 in x.chunks:
            qt, kt, vt, bias_t = x.tiles(t0, t1)
            chunk_probs = None if probs_i[0] is None else tuple(None if p is None else p[:, :, t0:t1] for p in probs_i)
            g = _backward(
                qt, kt, vt, bias_t, x.kc, x.vc, x.bias_c, lse_i[:, :, t0:t1], d_img[:, :, t0:t1], chunk_probs, x.scale
            )
            gq[:, :, t0:t1] = g[0]
            at = x.key_positions(t0, t1)
            for grad, g_t, g_c in ((dk, g[1], g[3]), (dv, g[2], g[4])):
                g_t, img = g_t.reshape(b, h, -1, d), grad[:, :, plan.img]
                if isinstance(at, slice):
                    img[:, :, at].add_(g_t)
                else:
                    img.index_add_(2, at, g_t)
                if g_c is not None:
                    _put(grad, g_c, plan.context)
        gq = gq.view(b, h, -1, d)
        if plan.q_order is None:
            dq[:, :, plan.img] = gq
        else:
            dq[:, :, plan.img].index_copy_(2, plan.q_order, gq)
        if x.has_text:
            d_txt = _pick(dout, plan.text_q, 2).unsqueeze(2).contiguous()
            gq, gk, gv, _, _ = _backward(x.qx, x.kx, x.vx, x.bias_x, None, None, None, lse_x, d_txt, probs_x, x.scale)
            _put(dq, gq[:, :, 0], plan.text_q)
            nk = plan.text_keys
            dk[:, :, :nk].add_(gk[:, :, 0])
            dv[:, :, :nk].add_(gv[:, :, 0])
        return dq, dk, dv, None, None, None


def blockwise_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: SparseMask,
    key_padding_mask: torch.Tensor | None,
    *,
    conv_tile: int | tuple[int, int] = (1, 32),
    lines_per_tile: int = 1,
    recompute: bool = True,
) -> torch.Tensor:
    """Sparse attention equal to SDPA with the oracle mask, computing only allowed blocks.

    Args:
        q, k, v: ``[B, H, N, D]``.
        mask: the layer's pattern (kind ``"row"``, ``"column"`` or ``"conv"``) on its layout.
        key_padding_mask: Bool ``[B, N]``, True = padding.
        conv_tile: conv query patch ``(rows, cols)`` (an int: square), clipped to grid divisors.
        lines_per_tile: row / column layers put this many image rows / columns in one tile.
        recompute: keep only q, k, v and the log-sum-exp for backward (else also the probabilities).

    Returns:
        ``[B, H, N, D]`` in the dtype of ``q`` (low-precision inputs are computed in float32).
    """
    plan = tile_plan(*mask, conv_tile, lines_per_tile, q.device)
    keep = None if key_padding_mask is None else ~key_padding_mask
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    # fp32 throughout, also under autocast: autocast would turn the tile matmuls into bf16 and the
    # exp / log-sum-exp on them would lose precision (and the bf16 tiles could not be assembled into
    # the fp32 output). The attention is a small share of a step's FLOPs next to the projections.
    with _no_autocast(q.device):
        if needs_grad:
            out = _SparseAttentionFn.apply(q, k, v, plan, keep, not recompute)
        else:
            out = _run_forward(_Inputs(q, k, v, plan, keep), plan, q, False)[0]
    return out.to(dtype)


def _no_autocast(device: torch.device):
    """Autocast off on ``device``'s type (the block-wise kernel computes in the dtype it is given)."""
    return torch.autocast(device_type=device.type, enabled=False)
