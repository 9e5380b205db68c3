"""Memory and compute planning: what a recipe needs per GPU and per host, without allocating.

The model is built on ``meta`` (shapes only). Memory per device is the sum of four parts; ``P`` is
the trained parameter count, ``S`` the shard-group size (1 without sharding, all ranks for full
sharding, the ranks of a node for hybrid sharding), ``T`` tokens per device per micro-batch:

* parameters: fp32 master shard ``4P/S`` (on the host with CPU offload) plus the unsharded compute
  copies FSDP materialises — the root (embeddings, heads) and two blocks (the one computing and the
  one prefetched) in the compute dtype;
* gradients: the fp32 shard ``4P/S`` (host with offload); with gradient accumulation the non-final
  micro-batches skip the reduce-scatter, so unsharded gradients ``P`` × compute bytes stay on the
  device — the price of skipping the traffic; without accumulation one block's unsharded gradients;
* optimizer states: AdamW's two fp32 moments, ``8P/S`` (host with offload);
* activations: what backward keeps, per token per layer, for a pre-norm block with fused QKV and
  SDPA (no N×N scores): ``(8C + 2M)`` values without recompute, ``C`` (the block input) with full
  recompute, ``7C + M`` with selective recompute (matmul/attention outputs kept), plus one block's
  full set while it is recomputed, plus fp32 logits and their gradient. QK-norm (a model whose
  ``qk_norm`` is true) adds the normalised queries and keys SDPA then keeps, ``2C`` values, and the
  norms' fp32 statistics, per token and layer without recompute or with selective recompute.

Models may override the activation term with ``activation_bytes(tokens) -> int``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from vilgkit.interfaces.parallel import MemoryPlan, StrategyLayout

GiB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

#: What a training rank holds beyond the planner's own process (an idle import of torch and the
#: plugins) before its model is wrapped: the process group and its gloo/NCCL state, the device
#: mesh, the data set and loader, the tokenizers, the stage's set-up. Measured on the CPU (gloo) as
#: each rank's resident memory when its training stage starts minus the planner's baseline, in
#: runs of the 10B recipe's smoke overlay: 0.085–0.14 GiB per rank with 4 ranks (2×2 mesh, hidden
#: 1024), about 0 with 2 (hidden 4096); docs/distributed.md, "Peak memory per rank against the plan".
RANK_RUNTIME_BYTES = GiB // 10


@dataclass
class ModelDims:
    """Shapes of a transformer generator that the estimate needs."""

    hidden: int
    layers: int
    heads: int
    mlp: int
    block_params: int  # parameters of all blocks together
    other_params: int  # embeddings, heads, norms
    vocab: int  # mean output vocabulary (for logits)
    qk_norm: bool = False  # normalised q and k are saved for backward as well


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def model_dims(model: nn.Module) -> ModelDims:
    """Introspect ``hidden_size``/``num_layers``/``num_heads``/``blocks()`` (works on ``meta``)."""
    blocks = list(model.blocks()) if callable(getattr(model, "blocks", None)) else []
    block_params = sum(count_parameters(b) for b in blocks)
    hidden = int(getattr(model, "hidden_size", 0) or 0)
    mlp = 4 * hidden
    if blocks:
        outs = [m.out_features for m in blocks[0].modules() if isinstance(m, nn.Linear) and m.in_features == hidden]
        outs = [o for o in outs if o != 3 * hidden]
        mlp = max(outs, default=mlp)
    vocabs = [
        int(v)
        for v in (
            getattr(model, "image_vocab_size", 0),
            getattr(model, "text_vocab_size", 0),
        )
        if v
    ]
    return ModelDims(
        hidden=hidden,
        layers=int(getattr(model, "num_layers", len(blocks)) or len(blocks)),
        heads=int(getattr(model, "num_heads", 1) or 1),
        mlp=int(mlp),
        block_params=block_params,
        other_params=count_parameters(model) - block_params,
        vocab=int(sum(vocabs) / len(vocabs)) if vocabs else 0,
        qk_norm=bool(getattr(model, "qk_norm", False)),
    )


def activation_bytes(dims: ModelDims, tokens: int, recompute: str, compute_bytes: int) -> dict[str, int]:
    """Saved-for-backward bytes per device for ``tokens`` tokens (see the module docstring)."""
    C, M, L = dims.hidden, dims.mlp, dims.layers
    # QK-norm: SDPA keeps the normalised q and k (2C), the two norms their fp32 mean and rstd per head
    qk = (2 * C * compute_bytes + 4 * 4 * dims.heads) if dims.qk_norm else 0
    full_layer = (8 * C + 2 * M) * compute_bytes + 4 * dims.heads + qk  # + SDPA's fp32 log-sum-exp per head
    kept = {
        "none": full_layer,
        "full": C * compute_bytes,
        "selective": (7 * C + M) * compute_bytes + qk,
    }[recompute]
    layers = L * kept * tokens
    working = 0 if recompute == "none" else full_layer * tokens  # one block recomputed at a time
    logits = 2 * 4 * dims.vocab * tokens  # fp32 logits + their gradient
    return {
        "layers": layers,
        "recompute_working": working,
        "logits": logits,
        "total": layers + working + logits,
    }


def estimate_memory(
    model: nn.Module,
    layout: StrategyLayout,
    tokens_per_device: int,
    *,
    nodes: int = 1,
    gpus_per_node: int = 1,
    grad_accum: int = 1,
    trained_params: int | None = None,
) -> MemoryPlan:
    """Bytes per device (and per host) for training ``model`` under ``layout``."""
    dims = model_dims(model)
    P = count_parameters(model, trainable_only=True) if trained_params is None else trained_params
    S = layout.shard_group(nodes, gpus_per_node)
    cb = DTYPE_BYTES[layout.param_dtype]
    nblocks = max(1, dims.layers)
    sharded = layout.sharding != "none"
    master = 4 * P // S
    grads_shard = 4 * P // S
    optim = 8 * P // S
    notes = [layout.describe(nodes, gpus_per_node)]
    if sharded:
        in_flight = (dims.other_params + 2 * dims.block_params // nblocks) * cb
        params_dev = in_flight + (0 if layout.cpu_offload else master)
        if grad_accum > 1:
            grads_dev = P * cb + (0 if layout.cpu_offload else grads_shard)
            notes.append(
                f"grad_accum={grad_accum}: unsharded gradients accumulate on the device "
                "(no reduce-scatter / offload copy until the last micro-batch)"
            )
        else:  # one block's unsharded gradients (the whole root for a model without blocks)
            per_block = dims.block_params // nblocks if dims.block_params else dims.other_params
            grads_dev = per_block * cb + (0 if layout.cpu_offload else grads_shard)
    else:
        params_dev = 4 * P + (P * cb if cb != 4 else 0)
        grads_dev = 4 * P
    optim_dev = 0 if (layout.cpu_offload and sharded) else optim
    act = getattr(model, "activation_bytes", None)
    if callable(act):
        acts = int(act(tokens_per_device))
    elif dims.layers and dims.hidden:
        acts = activation_bytes(dims, tokens_per_device, layout.recompute, cb)["total"]
    else:  # not a transformer and no estimate of its own: not counted (the plan says so)
        acts = 0
    host = (master + grads_shard + optim) * gpus_per_node if (layout.cpu_offload and sharded) else 0
    return MemoryPlan(
        int(params_dev),
        int(grads_dev),
        int(optim_dev),
        int(acts),
        host_bytes=int(host),
        notes=notes,
    )


# --------------------------------------------------------------------------- compute


def mean_keys_per_query(pattern: Any, num_layers: int, layouts: list[Any]) -> list[float]:
    """Per layer, the mean number of keys a query attends (from the pattern's oracle masks)."""
    out = []
    cache: dict[Any, float] = {}
    for layer in range(num_layers):
        kind = pattern.kind(layer, num_layers) if callable(getattr(pattern, "kind", None)) else layer
        if kind not in cache:
            total = sum(float(pattern.allowed(layer, num_layers, lay).sum()) for lay in layouts)
            cache[kind] = total / sum(lay.length for lay in layouts)
        out.append(cache[kind])
    return out


def flops_per_token(dims: ModelDims, keys_per_layer: list[float], head_flops: float) -> dict[str, float]:
    """Forward and training FLOPs per token (matmuls, attention scores, output heads)."""
    matmul = 2 * dims.block_params  # each weight multiplies once per token (biases/norms are noise)
    attention = sum(4 * dims.hidden * k for k in keys_per_layer)  # QK^T and AV
    fwd_blocks = matmul + attention
    fwd = fwd_blocks + head_flops
    return {
        "forward": fwd,
        "train": 3 * fwd,
        "train_full_recompute": 3 * fwd + fwd_blocks,
        "attention_share": attention / fwd if fwd else 0.0,
    }


def parse_bytes(text: str) -> int:
    """``"80GiB"``, ``"80GB"``, ``"512MiB"``, ``"1.5TiB"`` or a plain number of bytes."""
    units = {
        "tib": 1024**4,
        "gib": GiB,
        "mib": 1024**2,
        "kib": 1024,
        "tb": 10**12,
        "gb": 10**9,
        "mb": 10**6,
        "kb": 10**3,
        "b": 1,
    }
    raw = text.strip().lower().replace(" ", "")
    unit = next((u for u in units if raw.endswith(u)), None)  # longest suffixes first: "gib" before "b"
    number, scale = (raw[: -len(unit)], units[unit]) if unit else (raw, 1)
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 80GiB, 40GB)") from None
    if not math.isfinite(value * scale) or value <= 0:  # nan, inf and 1e400GiB are not sizes either
        raise ValueError(f"memory size must be a positive, finite amount, got {text!r}")
    return int(value * scale)


def gib(n: float) -> str:
    return f"{n / GiB:,.2f}"
