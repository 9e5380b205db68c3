"""Muon for hidden weight matrices, AdamW for everything else, as one optimizer.

Muon (PyTorch's ``torch.optim.Muon``) orthogonalises each matrix's momentum with a few
Newton–Schulz iterations before the update. It is meant for the 2-D weights *inside* the network;
embeddings, output heads, norms and biases keep AdamW. The trainer wants one optimizer per group
(one learning-rate schedule, one checkpoint file), so :class:`MuonAdamW` holds both parts:

* its ``param_groups`` are the very dicts that an inner ``torch.optim.Muon`` and an inner
  ``torch.optim.AdamW`` step, so a scheduler that writes ``group["lr"]`` drives both;
* its ``state`` is shared with both, so ``state_dict()`` / ``load_state_dict()`` have the standard
  single-optimizer layout and round-trip through ``torch.load(weights_only=True)``.

Muon's step is scaled with ``adjust_lr_fn="match_rms_adamw"`` (update RMS ≈ AdamW's), so one
peak learning rate and one weight decay serve both parts, as in the Moonlight recipe.

The Muon step itself is :func:`muon_step`, not ``torch.optim.Muon.step``: the same update
(Nesterov momentum, Newton–Schulz in bf16 with PyTorch's coefficients, decoupled weight decay,
RMS-matched learning rate), but the Newton–Schulz iterations of same-shape matrices run as one
batched matmul. A transformer's blocks have a handful of shapes, so this makes 4–8× fewer, larger
matmuls — the iteration was ≈ 18 % of a small model's CPU step when run one matrix at a time.
A shape held by a single matrix takes exactly PyTorch's 2-D path (bit-equal to ``torch.optim.Muon``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from vilgkit.engine.optim import listed_parameter_names, split_decay

MUON_MOMENTUM = 0.95
MUON_NS_STEPS = 5


def muon_param_groups(model: nn.Module, params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Groups for :class:`MuonAdamW`: decayed 2-D matrices → Muon; the rest → AdamW.

    "Decayed" uses the same rule as AdamW's groups (no norms, embeddings, biases, nor what a module
    lists in ``no_weight_decay()``); on top, anything listed in ``muon_excluded()`` stays on AdamW.
    """
    decay, no_decay = split_decay(model, params)
    excluded = listed_parameter_names(model, "muon_excluded")
    excluded_ids = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in excluded}
    muon = [p for p in decay if p.ndim == 2 and id(p) not in excluded_ids]
    muon_ids = {id(p) for p in muon}
    adam_decay = [p for p in decay if id(p) not in muon_ids]
    groups = [
        {"params": muon, "weight_decay": weight_decay, "use_muon": True},
        {"params": adam_decay, "weight_decay": weight_decay, "use_muon": False},
        {"params": no_decay, "weight_decay": 0.0, "use_muon": False},
    ]
    return [g for g in groups if g["params"]]


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over groups tagged ``use_muon``: Muon steps those, AdamW the others.

    Args:
        param_groups: dicts with ``params``, ``weight_decay`` and ``use_muon`` (see
            :func:`muon_param_groups`).
        lr: peak learning rate of both parts (Muon's is RMS-matched to AdamW's).
        betas: AdamW betas.
        momentum: Muon's (Nesterov) momentum.
        ns_steps: Newton–Schulz iterations per Muon update (PyTorch's default: 5).
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        *,
        lr: float,
        betas: tuple[float, float],
        momentum: float = MUON_MOMENTUM,
        ns_steps: int = MUON_NS_STEPS,
    ) -> None:
        muon_groups = [dict(g) for g in param_groups if g.get("use_muon")]
        adam_groups = [dict(g) for g in param_groups if not g.get("use_muon")]
        for g in muon_groups:
            bad = [tuple(p.shape) for p in g["params"] if p.ndim != 2]
            if bad:
                raise ValueError(f"Muon steps 2-D matrices only; group has parameters of shapes {bad}")
        # The inner optimizers fill each group dict with their defaults; the outer one adopts the
        # same dicts, so whatever sets group["lr"] on this optimizer sets it for the inner step.
        self._muon = (
            torch.optim.Muon(muon_groups, lr=lr, momentum=momentum, ns_steps=ns_steps, adjust_lr_fn="match_rms_adamw")
            if muon_groups
            else None
        )
        self._adamw = torch.optim.AdamW(adam_groups, lr=lr, betas=tuple(betas)) if adam_groups else None
        inner = (self._muon.param_groups if self._muon else []) + (self._adamw.param_groups if self._adamw else [])
        super().__init__(inner, defaults={"lr": lr})
        self._link()

    def _link(self) -> None:
        """Point both inner optimizers at this optimizer's group dicts and state."""
        if self._muon is not None:
            self._muon.param_groups = [g for g in self.param_groups if g.get("use_muon")]
            self._muon.state = self.state
        if self._adamw is not None:
            self._adamw.param_groups = [g for g in self.param_groups if not g.get("use_muon")]
            self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Standard loading, then re-link (loading replaces the group dicts and the state)."""
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer.step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._muon is not None:
            for group in self._muon.param_groups:
                muon_step(group, self.state)
        if self._adamw is not None:
            self._adamw.step()
        return loss


def muon_step(group: dict[str, Any], state: dict[Any, Any]) -> None:
    """One Muon update of a ``torch.optim.Muon`` parameter group, Newton–Schulz batched by shape.

    Same math as PyTorch's single-tensor Muon; ``group`` carries its keys (``lr``, ``momentum``,
    ``nesterov``, ``ns_coefficients``, ``ns_steps``, ``eps``, ``weight_decay``) and must use
    ``adjust_lr_fn="match_rms_adamw"``; ``state[p]["momentum_buffer"]`` is created as PyTorch does.
    """
    if group["adjust_lr_fn"] != "match_rms_adamw":
        raise ValueError(f"muon_step implements adjust_lr_fn='match_rms_adamw', got {group['adjust_lr_fn']!r}")
    params = [p for p in group["params"] if p.grad is not None]
    if not params:
        return
    lr, momentum = float(group["lr"]), group["momentum"]
    updates = []
    for p in params:
        buf = state[p].get("momentum_buffer")
        if buf is None:
            buf = state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        buf.lerp_(p.grad, 1 - momentum)
        updates.append(p.grad.lerp(buf, momentum) if group["nesterov"] else buf)
    # Orient every update wide (rows ≤ columns), as PyTorch does, and batch equal shapes.
    wide = [u if u.shape[0] <= u.shape[1] else u.T for u in updates]
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, u in enumerate(wide):
        by_shape[tuple(u.shape)].append(i)
    for indices in by_shape.values():
        ortho = newton_schulz([wide[i] for i in indices], group["ns_coefficients"], group["ns_steps"], group["eps"])
        for i, o in zip(indices, ortho):
            p = params[i]
            o = o if p.shape[0] <= p.shape[1] else o.T
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(o, alpha=-lr * 0.2 * max(p.shape) ** 0.5)  # "match_rms_adamw": 0.2 · √max(A, B)


def newton_schulz(
    matrices: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int, eps: float
) -> list[torch.Tensor]:
    """Approximately orthogonalise wide matrices of one shape (PyTorch Muon's quintic iteration, bf16).

    One matrix runs PyTorch's 2-D ops exactly; several run as one stack with ``baddbmm``.
    """
    a, b, c = coefficients
    if len(matrices) == 1:
        x = matrices[0].to(torch.bfloat16, copy=True)  # never normalise a momentum buffer in place
        x.div_(x.norm().clamp(min=eps))
        for _ in range(steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return [x]
    x = torch.stack(matrices).bfloat16()
    x.div_(torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True).clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return list(x.unbind(0))


def muon_factory(*, lr: float, betas: tuple[float, float]):
    """``factory(param_groups) -> MuonAdamW`` for :meth:`ParallelStrategy.build_optimizer`."""

    def factory(param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return MuonAdamW(param_groups, lr=lr, betas=betas)

    return factory
