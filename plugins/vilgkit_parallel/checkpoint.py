"""Sharded save/load of training state with ``torch.distributed.checkpoint`` (DCP).

``state`` is a (nested) dict the trainer builds: modules and optimizers go through DCP — each rank
writes only its shards, and loading reshards to whatever world size and mesh the loader has —
while everything else (step, RNG, schedulers, data position) is per-rank plain data saved with
:mod:`vilgkit_parallel.safe_state`. The marker of :mod:`vilgkit.sharded` is written last, so a
crash mid-save leaves a directory that is never loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vilgkit import sharded
from vilgkit_parallel import safe_state

Unwrap = Callable[[nn.Module], nn.Module]
OBJECTS = "objects"


def _walk(state: dict[str, Any], prefix: tuple[str, ...] = ()):
    """Yield ``(path, value)`` for modules, optimizers and other leaves of the state tree."""
    for key, value in state.items():
        path = (*prefix, str(key))
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, (nn.Module, torch.optim.Optimizer)) for v in value.values())
        ):
            yield from _walk(value, path)
        else:
            yield path, value


def _owner(opt: torch.optim.Optimizer, modules: dict[str, nn.Module]) -> nn.Module:
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    for module in modules.values():
        if ids <= {id(p) for p in module.parameters()}:
            return module
    raise ValueError("an optimizer's parameters belong to no single module in the checkpoint state")


def _split(state: dict[str, Any], unwrap: Unwrap):
    modules, optims, others = {}, {}, {}
    for path, value in _walk(state):
        name = ".".join(path)
        if isinstance(value, nn.Module):
            modules[name] = unwrap(value)
        elif isinstance(value, torch.optim.Optimizer):
            optims[name] = value
        else:
            others[name] = (path, value)
    return modules, optims, others


def _stateful(value: Any) -> bool:
    return hasattr(value, "state_dict") and hasattr(value, "load_state_dict")


def _plain(value: Any) -> Any:
    """Schedulers and other stateful objects (also inside dicts) become their state dicts."""
    if _stateful(value):
        return value.state_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _rank_files(directory: Path, rank: int) -> list[Path]:
    return sorted(directory.glob(f"__{rank}_*.distcp")) + sorted(directory.glob(f"rank{rank}.*"))


def save(directory: Path, state: dict[str, Any], unwrap: Unwrap) -> None:
    """Collective: every rank calls it with the same ``directory``."""
    directory = Path(directory)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / sharded.MARKER).unlink(missing_ok=True)
    dist.barrier()
    modules, optims, others = _split(state, unwrap)
    tensors: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    for name, module in modules.items():
        tensors[name], rest = safe_state.split_tensors(get_model_state_dict(module))
        if rest:
            objects[name] = rest
    for name, opt in optims.items():
        tensors[name], objects[name] = safe_state.split_tensors(get_optimizer_state_dict(_owner(opt, modules), opt))
    dcp.save(tensors, checkpoint_id=str(directory))
    local = {name: _plain(value) for name, (_, value) in others.items()}
    safe_state.save(directory / f"rank{rank}", local)
    if rank == 0:
        safe_state.save(directory / OBJECTS, objects)
    dist.barrier()
    # Hash in parallel: each rank its own shards and side files, rank 0 whatever is left.
    mine = {p.name: sharded.sha256_file(p) for p in _rank_files(directory, rank)}
    gathered: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        hashes = {k: v for part in gathered for k, v in (part or {}).items()}
        for path in directory.iterdir():
            if path.is_file() and path.name not in hashes and path.name != sharded.MARKER:
                hashes[path.name] = sharded.sha256_file(path)
        sharded.write_json_atomic(
            directory / sharded.MARKER,
            {
                "format": sharded.FORMAT,
                "world_size": world,
                "modules": sorted(modules),
                "optimizers": sorted(optims),
                "others": sorted(others),
                "files": hashes,
            },
        )
    dist.barrier()


def load(directory: Path, state: dict[str, Any], unwrap: Unwrap) -> None:
    """Collective inverse of :func:`save`; works for any world size and sharding layout."""
    directory = Path(directory)
    rank, world = dist.get_rank(), dist.get_world_size()
    marker = sharded.read_marker(directory)
    names = sorted(marker["files"])
    error = None
    try:  # every rank verifies a share of the files and reads the metadata, then all agree
        sharded.verify(directory, files=names[rank::world])
        sharded.load_metadata(directory)  # a refused pickle is our one-line error, not DCP's wrapped one
    except sharded.CheckpointIntegrityError as err:
        error = str(err)
    errors: list[str | None] = [None] * world
    dist.all_gather_object(errors, error)
    if any(errors):
        raise sharded.CheckpointIntegrityError(next(e for e in errors if e))
    modules, optims, others = _split(state, unwrap)
    _check_names(marker, modules, optims, others, directory)
    template: dict[str, Any] = {}
    for name, module in modules.items():
        template[name], _ = safe_state.split_tensors(get_model_state_dict(module))
    for name, opt in optims.items():
        template[name], _ = safe_state.split_tensors(get_optimizer_state_dict(_owner(opt, modules), opt))
    dcp.load(template, storage_reader=sharded.safe_reader(directory), planner=sharded.tensor_only_planner())
    objects = safe_state.load(directory / OBJECTS)
    for name, module in modules.items():
        set_model_state_dict(
            module, safe_state.merge_trees(template[name], objects.get(name)), options=StateDictOptions(strict=True)
        )
    for name, opt in optims.items():
        full = safe_state.merge_trees(template[name], objects.get(name))
        full.setdefault("state", {})  # an optimizer without tensor state (plain SGD) saved none
        set_optimizer_state_dict(_owner(opt, modules), opt, full)
    local = safe_state.load(directory / f"rank{rank % int(marker['world_size'])}")
    for name, (path, target) in others.items():
        _restore(state, path, target, local[name])


def _check_names(marker, modules, optims, others, directory: Path) -> None:
    for kind, have in (("modules", modules), ("optimizers", optims), ("others", others)):
        saved = set(marker.get(kind, []))
        if saved != set(have):
            raise ValueError(
                f"{directory}: the checkpoint holds {kind} {sorted(saved)} but the state to load has {sorted(have)}"
            )


def _restore(state: dict[str, Any], path: tuple[str, ...], target: Any, value: Any) -> None:
    if _stateful(target):
        target.load_state_dict(value)
    elif isinstance(target, dict) and target and any(_stateful(v) for v in target.values()):
        for key, item in target.items():
            _restore(target, (key,), item, value[key])
    elif isinstance(target, dict) and isinstance(value, dict):
        target.clear()
        target.update(value)
    else:  # immutable leaf: replace it in the caller's dict
        node = state
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU copy of a (possibly sharded) module's state (complete on rank 0)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)
