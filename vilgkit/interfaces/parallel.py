"""The parallel-strategy interface: how modules are wrapped, optimised and checkpointed.

Model code stays single-device; a strategy applies, in this order (docs/architecture.md §4): build on
``meta`` → activation checkpointing → compile (optional) → shard per block then the root →
materialise and initialise. The training loop only talks to this interface, so the same loop runs
single-device, DDP or FSDP.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class StrategyLayout:
    """How a strategy lays out training state (what ``vilgkit plan`` needs to know).

    Attributes:
        sharding: ``"none"`` (every rank holds everything), ``"full"`` or ``"hybrid"``.
        shard_size: ranks per shard group for hybrid sharding (``None``: ranks per node).
        cpu_offload: sharded master weights, gradients and optimizer states on the host.
        recompute: activation checkpointing per block: ``"none"``, ``"full"``, ``"selective"``.
        param_dtype: dtype of the compute copy of the parameters.
        reduce_dtype: dtype of gradient reductions.
    """

    sharding: Literal["none", "full", "hybrid"] = "none"
    shard_size: int | None = None
    cpu_offload: bool = False
    recompute: Literal["none", "full", "selective"] = "none"
    param_dtype: str = "fp32"
    reduce_dtype: str = "fp32"

    def shard_group(self, nodes: int, gpus_per_node: int) -> int:
        if self.sharding == "none":
            return 1
        if self.sharding == "full":
            return nodes * gpus_per_node
        return self.shard_size or gpus_per_node

    def describe(self, nodes: int, gpus_per_node: int) -> str:
        s = self.shard_group(nodes, gpus_per_node)
        world = nodes * gpus_per_node
        where = {
            "none": "replicated",
            "full": f"sharded over {s}",
            "hybrid": f"sharded over {s}, replicated ×{world // max(1, s)}",
        }[self.sharding]
        return (
            f"{where}; offload={'on' if self.cpu_offload else 'off'}; recompute={self.recompute}; "
            f"params {self.param_dtype}, reduce {self.reduce_dtype}"
        )


@dataclass
class MemoryPlan:
    """Estimated bytes per device (and per host for offloaded state) for one training set-up."""

    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    host_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def device_total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations


class ParallelStrategy(ABC):
    """Owns devices, process groups, wrapping, optimizer construction and checkpoint I/O."""

    #: the device this rank computes on
    device: torch.device

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes logs, samples and reports."""
        return self.rank == 0

    def setup(self) -> None:
        """Initialise process groups / device meshes (idempotent)."""

    @abstractmethod
    def wrap(self, model: nn.Module) -> nn.Module:
        """Apply the strategy to ``model`` (moved to ``device``); returns the module to train."""

    def build_optimizer(self, params: list[nn.Parameter] | list[dict[str, Any]], factory: Any) -> torch.optim.Optimizer:
        """Build an optimizer for wrapped parameters; ``factory(params) -> Optimizer``."""
        return factory(params)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Context that skips gradient synchronisation (non-final micro-batches)."""
        return contextlib.nullcontext()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over data-parallel ranks (identity on one device)."""
        return value

    def barrier(self) -> None:
        """Wait for every rank (no-op on one device)."""

    def clip_grad_norm_(self, model: nn.Module, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the gradients to a total norm of ``max_norm`` (``inf``: measure only); returns the
        total norm before clipping, the same on every rank. Called on every rank after backward.

        The default suits one device, DDP (replicated gradients) and FSDP2 (DTensor gradients, whose
        norm ``torch.nn.utils.clip_grad_norm_`` reduces over the mesh): the torch function over
        ``params``, the optimizer group being stepped. A wrapper whose class defines its own
        ``clip_grad_norm_(max_norm)`` (FairScale's FSDP, PyTorch's FSDP1) is asked instead: there
        each rank holds plain tensors with a shard of the gradient, and the torch function would
        return this rank's partial norm. Such a wrapper clips every gradient of ``model``.

        Args:
            model: the module :meth:`wrap` returned.
            params: the parameters of the optimizer group about to step.
            max_norm: the largest total gradient norm kept.
        """
        if callable(getattr(type(model), "clip_grad_norm_", None)):
            norm = model.clip_grad_norm_(max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    @abstractmethod
    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full (unsharded) model state for export; may only be complete on the main rank."""

    @abstractmethod
    def save_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        """Write ``state`` (models, optimizers, schedulers, extra) into ``directory``.

        The caller makes the step directory atomic (write to a temporary name, then rename).
        """

    @abstractmethod
    def load_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        """Load into the objects of ``state`` in place (the inverse of :meth:`save_checkpoint`)."""

    def layout(self) -> StrategyLayout:
        """How this strategy lays out training state (``vilgkit plan`` reads it); the default is an
        unsharded replica on every rank."""
        return StrategyLayout()

    def build_module(self, factory: Any, weights: str | Path | None = None) -> nn.Module:
        """Build a module with ``factory()``; sharding strategies build it on ``meta`` so that no
        rank ever allocates the full model (``wrap`` then materialises only its shards).

        Args:
            factory: makes the module (called once).
            weights: a safetensors file of the module's whole state dict (a run's file, verified
                against its manifest, keys and shapes checked): the module starts from these values.
                This default loads them into the built module; a sharding strategy instead reads
                them in :meth:`wrap`, one tensor at a time, each rank keeping its shard.
        """
        module = factory()
        if weights is not None:
            # the verified loader itself, not the package: vilgkit.artifacts also loads recipes,
            # which import the interfaces
            from vilgkit.artifacts.rundir import load_weights

            load_weights(module, weights)
        return module

    def memory_plan(self, model: nn.Module, tokens_per_device: int) -> MemoryPlan:
        """Estimated memory per device for training ``model`` under this strategy."""
        raise NotImplementedError(f"{type(self).__name__} does not report a memory plan")

    @contextlib.contextmanager
    def autocast(self, dtype: torch.dtype | None) -> Iterator[None]:
        """Mixed-precision context for forward passes (``dtype=None`` disables it)."""
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                yield
