"""Non-tensor training state (step, RNG states, schedulers) saved without pickle.

Plain Python data goes to JSON with tags for what JSON lacks (tuples, non-string keys, bytes);
tensors and numpy arrays go to a safetensors file next to it. Loading never executes code.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_TAGS = ("__vk_tensor__", "__vk_ndarray__", "__vk_tuple__", "__vk_dict__", "__vk_bytes__", "__vk_dtype__")


def encode(obj: Any, tensors: dict[str, torch.Tensor], path: str = "state") -> Any:
    """JSON-able form of ``obj``; tensors/arrays are moved into ``tensors`` and referenced by name."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__vk_tensor__": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__vk_ndarray__": name}
    if isinstance(obj, torch.dtype):
        return {"__vk_dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, bytes):
        return {"__vk_bytes__": base64.b64encode(obj).decode()}
    if isinstance(obj, tuple):
        return {"__vk_tuple__": [encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {
            "__vk_dict__": [[encode(k, tensors, path), encode(v, tensors, f"{path}[{k!r}]")] for k, v in obj.items()]
        }
    raise TypeError(f"cannot save {type(obj).__name__} at {path}: only tensors, arrays and plain data are saved")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag == "__vk_tensor__":
            return tensors[value]
        if tag == "__vk_ndarray__":
            return tensors[value].numpy()
        if tag == "__vk_tuple__":
            return tuple(decode(v, tensors) for v in value)
        if tag == "__vk_dict__":
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in value}
        if tag == "__vk_bytes__":
            return base64.b64decode(value)
        if tag == "__vk_dtype__":
            return getattr(torch, value)
    return {k: decode(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save(stem: Path, obj: Any) -> list[Path]:
    """Write ``stem.json`` (+ ``stem.safetensors`` when there are tensors); returns the files."""
    tensors: dict[str, torch.Tensor] = {}
    data = encode(obj, tensors)
    files = [stem.with_suffix(".json")]
    files[0].write_text(json.dumps({"data": data, "tensors": sorted(tensors)}))
    if tensors:
        files.append(stem.with_suffix(".safetensors"))
        save_file(tensors, str(files[1]))
    return files


def load(stem: Path) -> Any:
    """Read what :func:`save` wrote."""
    record = json.loads(stem.with_suffix(".json").read_text())
    tensors = load_file(str(stem.with_suffix(".safetensors"))) if record["tensors"] else {}
    return decode(record["data"], tensors)


def split_tensors(tree: Any) -> tuple[Any, Any]:
    """``(tensor leaves only, everything else)`` of a nested dict; lists stay on the second side."""
    if isinstance(tree, torch.Tensor):
        return tree, None
    if isinstance(tree, dict):
        tens, rest = {}, {}
        for k, v in tree.items():
            t, r = split_tensors(v)
            if t is not None and not (isinstance(t, dict) and not t):
                tens[k] = t
            if r is not None and not (isinstance(r, dict) and not r):
                rest[k] = r
        return tens, rest
    if isinstance(tree, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in tree):
        raise TypeError("tensors inside lists are not supported in sharded state")
    return None, tree


def merge_trees(a: Any, b: Any) -> Any:
    """Recursive union of two nested dicts (inverse of :func:`split_tensors`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge_trees(out[k], v) if k in out else v
        return out
    return b if a is None else a
