"""Build a module on ``meta`` and later fill each rank's shards with exactly the values a CPU build
would have given, one tensor at a time (no rank ever holds the whole model).

While the factory runs on ``meta`` under :class:`InitRecorder`:

* every op that draws random numbers is also run on a real, empty CPU tensor of the same shape and
  dtype (the result is thrown away), so the global RNG advances exactly as in a CPU build: what
  the rest of the program draws afterwards is unchanged;
* the ops that set a tensor's values are recorded per storage — its producer (``empty``, ``zeros``,
  ``clone`` of another tensor…), then every in-place op on it (``uniform_``, ``normal_``,
  ``zero_``, ``fill_``…), random ones with the RNG state just before them.

:meth:`InitRecorder.value` then replays one tensor's record on the CPU (other tensors it was made
from are replayed too, as they were at that moment). The strategy keeps only its shard of the
result. Peak extra memory: the largest tensor (with what it was derived from).

A tensor whose values cannot be reproduced (an in-place op through a view with another shape, an op
reading data of a tensor with no record, an explicit ``generator=``) makes :meth:`value` raise
:class:`NotReproducible`; the strategy then says so instead of training different weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

#: in-place ops that overwrite every element (an unknown starting value does not matter)
_OVERWRITE = {
    "fill_",
    "zero_",
    "copy_",
    "normal_",
    "uniform_",
    "bernoulli_",
    "random_",
    "exponential_",
    "log_normal_",
    "cauchy_",
    "geometric_",
}


class NotReproducible(RuntimeError):
    """A tensor's initial values depend on something the record does not hold."""


@dataclass(frozen=True)
class _Ref:
    """A meta tensor used as an argument: its storage, geometry, and the op count at that moment."""

    key: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: torch.dtype
    at: int


@dataclass
class _Op:
    func: Any
    args: tuple
    kwargs: dict
    rng: torch.Tensor | None  # the CPU RNG state right before a random op
    at: int


@dataclass
class _Record:
    keep: torch.Tensor  # keeps the storage alive, so its key is never reused
    producer: _Op | None
    output: int = 0  # which output of the producer
    inplace: list[_Op] = field(default_factory=list)
    broken: str | None = None


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _geometry(t: torch.Tensor) -> tuple:
    return tuple(t.shape), tuple(t.stride()), t.storage_offset()


class InitRecorder(TorchDispatchMode):
    """Record how every meta tensor built under it got its values (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[int, _Record] = {}
        self.count = 0

    # ------------------------------------------------------------------ recording

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        seeded = torch.Tag.nondeterministic_seeded in func.tags
        rng = torch.get_rng_state() if seeded else None
        if seeded and kwargs.get("generator") is None:
            real_args, real_kwargs = tree_map(_real_empty, (args, kwargs))
            func(*real_args, **real_kwargs)  # advance the CPU RNG exactly as a CPU build would
        out = func(*args, **kwargs)
        self.count += 1
        op = _Op(func, *tree_map(self._ref, (tuple(args), dict(kwargs))), rng, self.count)
        if seeded and kwargs.get("generator") is not None:
            self._break(
                out if isinstance(out, torch.Tensor) else args[0],
                "drawn with its own generator=",
            )
        schema_args = func._schema.arguments
        mutates = bool(schema_args) and schema_args[0].alias_info is not None and schema_args[0].alias_info.is_write
        if mutates and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            self._mutated(args[0], op)
        else:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for i, o in enumerate(outs):
                if isinstance(o, torch.Tensor) and o.is_meta and _key(o) not in self.records:
                    self.records[_key(o)] = _Record(o, op, i)
        return out

    def _ref(self, value: Any) -> Any:
        if not (isinstance(value, torch.Tensor) and value.is_meta):
            return value
        if _key(value) not in self.records:  # e.g. an nn.Parameter made from an unseen tensor
            self.records[_key(value)] = _Record(value, None)
        size, stride, offset = _geometry(value)
        return _Ref(_key(value), size, stride, offset, value.dtype, self.count)

    def _mutated(self, tensor: torch.Tensor, op: _Op) -> None:
        record = self.records.setdefault(_key(tensor), _Record(tensor, None))
        if _geometry(tensor) != _geometry(record.keep) or tensor.dtype != record.keep.dtype:
            record.broken = f"written in place through a view ({op.func})"
        record.inplace.append(op)

    def _break(self, tensor: torch.Tensor, why: str) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.is_meta:
            self.records.setdefault(_key(tensor), _Record(tensor, None)).broken = why

    # ------------------------------------------------------------------ replay

    def knows(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` was built under this recorder."""
        return tensor.is_meta and _key(tensor) in self.records

    def value(self, tensor: torch.Tensor) -> torch.Tensor:
        """The CPU values ``tensor`` (built under this recorder) had when construction ended."""
        size, stride, offset = _geometry(tensor)
        return self._replay(_Ref(_key(tensor), size, stride, offset, tensor.dtype, self.count + 1), "")

    def _replay(self, ref: _Ref, name: str) -> torch.Tensor:
        record = self.records.get(ref.key)
        if record is None:
            raise NotReproducible(f"{name or 'a tensor'}: no record of how it was made")
        if record.broken:
            raise NotReproducible(f"{name or 'a tensor'}: {record.broken}")
        ops = [op for op in record.inplace if op.at < ref.at]
        if record.producer is None:
            if not ops or ops[0].func._schema.name.split("::")[-1] not in _OVERWRITE:
                raise NotReproducible(f"{name or 'a tensor'}: its starting values were never recorded")
            base = torch.empty_strided(*_geometry(record.keep)[:2], dtype=record.keep.dtype)
        else:
            out = self._run(record.producer, name)
            base = out[record.output] if isinstance(out, (tuple, list)) else out
        for op in ops:
            self._run(op, name, target=base)
        if _geometry(base) == (ref.size, ref.stride, ref.offset) and base.dtype == ref.dtype:
            return base
        return base.as_strided(ref.size, ref.stride, ref.offset)

    def _run(self, op: _Op, name: str, target: torch.Tensor | None = None) -> Any:
        def resolve(value: Any) -> Any:
            return self._replay(value, name) if isinstance(value, _Ref) else value

        args, kwargs = tree_map(resolve, (op.args[1:] if target is not None else op.args, op.kwargs))
        if target is not None:  # an in-place op: it writes into the tensor being replayed
            args = (target, *args)
        if kwargs.get("device") is not None:
            kwargs["device"] = torch.device("cpu")
        if op.rng is None:
            return op.func(*args, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(op.rng)
            return op.func(*args, **kwargs)


def _real_empty(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_meta:
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype)
    if isinstance(value, torch.device) and value.type == "meta":
        return torch.device("cpu")
    return value


def build_on_meta(
    factory: Callable[[], torch.nn.Module],
) -> tuple[torch.nn.Module, InitRecorder]:
    """``factory()`` on ``meta`` under a recorder; the CPU RNG ends where a CPU build leaves it."""
    recorder = InitRecorder()
    with torch.device("meta"), recorder:
        module = factory()
    return module, recorder
