"""A run's safetensors weights file read one tensor at a time.

What a sharding strategy needs to fill its shards from a file (``build_module(factory,
weights=path)``): the file is verified against its run's manifest and its header is checked against
the module before any tensor is read, then each tensor is read on its own (safetensors maps the
file), so a rank never holds more than one full tensor of the model at once. Tied weights stored
once (``vilgkit_aliases``, :func:`vilgkit.artifacts.save_tensors`) are read under every name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vilgkit import artifacts


class TensorFile:
    """A verified safetensors file whose tensors are read by name, one at a time.

    Args:
        path: the file; verified against the manifest of the run that holds it (if any).

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: the file changed since it was written or is not a safetensors file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no weights file at {self.path}")
        artifacts.verify_file(self.path)
        self.shapes = artifacts.tensor_shapes(self.path)
        self._aliases: dict[str, str] = json.loads(artifacts.tensor_metadata(self.path).get("vilgkit_aliases", "{}"))

    def check(self, module: nn.Module) -> None:
        """Raise :class:`~vilgkit.artifacts.ArtifactError` unless the file holds exactly ``module``'s
        state-dict keys with its shapes (works on a module built on ``meta``)."""
        problem = artifacts.weights_mismatch(module, self.shapes)
        if problem:
            raise artifacts.ArtifactError(f"{self.path} does not fit the {type(module).__name__}: {problem}")

    def nbytes(self) -> int:
        """Bytes of the tensors stored (tied weights once), from the header."""
        from safetensors import safe_open

        with artifacts.readable(self.path), safe_open(str(self.path), framework="pt") as fh:
            total = 0
            for name in fh.keys():
                part = fh.get_slice(name)
                count = 1
                for n in part.get_shape():
                    count *= n
                total += count * _ITEM_BYTES.get(part.get_dtype(), 4)
        return total

    def tensor(self, name: str) -> torch.Tensor:
        """The full CPU tensor stored under ``name`` (or under the name it is tied to)."""
        from safetensors import safe_open

        with artifacts.readable(self.path), safe_open(str(self.path), framework="pt") as fh:
            return fh.get_tensor(self._aliases.get(name, name))


#: bytes per element of safetensors' dtype names
_ITEM_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "BF16": 2, "F16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
