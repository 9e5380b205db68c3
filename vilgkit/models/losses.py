"""Token cross-entropy over a large vocabulary without fp32 copies of the logits.

``F.cross_entropy(logits.float(), labels)`` at the generator's sizes (8 × 256 targets × 8192 codes)
writes and reads several full ``[M, V]`` fp32 tensors per step: the upcast copy, the log-softmax,
the zero-filled gradient of the NLL, the log-softmax gradient and its downcast — on the CPU each a
fresh allocation of ≈ 64 MiB that is page-faulted in again every step. In a bf16 training step of a
small generator the profiler put ≈ 20 % of the time there (docs/performance.md).
:func:`token_cross_entropy` computes the same loss row chunk by row chunk: the forward keeps only
one log-sum-exp per row (fp32), the backward recomputes the softmax of each chunk in fp32 and writes
the gradient once, in the logits' dtype. The values equal ``F.cross_entropy`` on fp32 logits up to
float rounding (tests check loss and gradient).

Dimension key: M rows (batch × target positions), V vocabulary.
"""

from __future__ import annotations

import torch

#: Rows per chunk: a ``[ROWS, V]`` fp32 temporary (8 MiB at V = 8192) stays in the cache.
CHUNK_ROWS = 256


class _TokenCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        valid = labels != ignore_index
        safe = labels.masked_fill(~valid, 0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], CHUNK_ROWS):
            lse[start : start + CHUNK_ROWS] = torch.logsumexp(logits[start : start + CHUNK_ROWS].float(), dim=-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        count = valid.sum()
        loss = ((lse - picked) * valid).sum() / count  # count 0: nan, as F.cross_entropy's mean
        ctx.save_for_backward(logits, safe, valid, lse, count)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, safe, valid, lse, count = ctx.saved_tensors
        scale = (grad.float() / count) * valid  # [M]: 0 on ignored rows
        out = torch.empty_like(logits)
        rows = torch.arange(logits.shape[0], device=logits.device)
        for start in range(0, logits.shape[0], CHUNK_ROWS):
            sl = slice(start, start + CHUNK_ROWS)
            # the chunk's softmax, in a copy (fp32 logits must stay intact)
            p = logits[sl].to(torch.float32, copy=True).sub_(lse[sl, None]).exp_()
            p[rows[sl] - start, safe[sl]] -= 1.0
            out[sl] = p.mul_(scale[sl, None])
        return out, None, None


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of ``logits [..., V]`` against ``labels [...]`` over the non-ignored positions.

    Equal to ``F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=...)``;
    the gradient comes back in the logits' dtype.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    flat = logits.reshape(-1, logits.shape[-1])
    return _TokenCrossEntropy.apply(flat.contiguous(), labels.reshape(-1), ignore_index)
