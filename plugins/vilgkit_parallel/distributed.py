"""Process groups, devices and meshes for the multi-process strategies.

The launcher is ``torchrun`` (single- or multi-node): it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``. Without them (a plain ``vilgkit run``) a strategy runs as a
one-process group, so the same recipe works on a laptop and on a cluster.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told this process."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_env() -> LaunchEnv:
    """Read torchrun's environment (defaults describe one process)."""

    def _int(name: str, default: int) -> int:
        raw = os.environ.get(name)
        return int(raw) if raw not in (None, "") else default

    world = _int("WORLD_SIZE", 1)
    return LaunchEnv(
        rank=_int("RANK", 0),
        world_size=world,
        local_rank=_int("LOCAL_RANK", 0),
        local_world_size=_int("LOCAL_WORLD_SIZE", world),
    )


def pick_device(device: str | None, env: LaunchEnv) -> torch.device:
    """``"auto"``/``None``: this rank's GPU when CUDA is present, else the CPU."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("the strategy asks for CUDA but torch.cuda.is_available() is False")
        dev = torch.device("cuda", env.local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


def init_process_group(device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join (or create) the default process group; idempotent.

    CUDA ranks get NCCL for tensors on the GPU and gloo for CPU tensors (CPU-offloaded state,
    checkpoint coordination); CPU ranks use gloo. A single process without torchrun gets a
    one-member group on an in-memory store, so FSDP and DCP code paths are the same everywhere.
    """
    if dist.is_initialized():
        return
    env = launch_env()
    backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
    # Leave the group before the interpreter tears down: a gloo group still alive at exit can
    # abort a rank ("terminate called without an active exception") after the work is done.
    atexit.register(_destroy_process_group)
    timeout = datetime.timedelta(seconds=timeout_s)
    if "MASTER_ADDR" in os.environ and env.world_size >= 1 and "RANK" in os.environ:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timeout, **kwargs)
    else:
        if env.world_size != 1:
            raise RuntimeError(
                f"WORLD_SIZE={env.world_size} but no MASTER_ADDR/RANK: launch with torchrun "
                "(e.g. torchrun --nproc-per-node 8 -m vilgkit run RECIPE)"
            )
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def build_mesh(device: torch.device, replicate: int, shard: int) -> DeviceMesh:
    """A 2-D mesh ``(replicate, shard)``; ranks of one shard group are consecutive (one node)."""
    world = dist.get_world_size()
    if replicate * shard != world:
        raise ValueError(f"mesh {replicate}x{shard} does not match the world size {world}")
    return init_device_mesh(device.type, (replicate, shard), mesh_dim_names=("replicate", "shard"))


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over every rank (a copy; the input is untouched)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
