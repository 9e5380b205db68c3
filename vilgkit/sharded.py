"""Sharded checkpoint directories (``torch.distributed.checkpoint``) that are safe to load.

A sharded step directory holds DCP's files (``.metadata`` + ``__<rank>_<i>.distcp`` shards), our
side files (non-tensor state as JSON, small per-rank tensors as safetensors) and, written **last**,
the marker ``vilgkit_dcp.json`` with the SHA-256 of every other file. A directory without a valid
marker is incomplete and is never loaded.

Why the hash: DCP stores ``.metadata`` with ``pickle``, and unpickling runs code. We only open
``.metadata`` when its hash matches our marker, and even then through an unpickler that allows
DCP's metadata classes only. Shard payloads are raw tensor bytes (read by DCP with
``torch.load(weights_only=True)``); a load planner here refuses pickled byte items outright.

Core code (``vilgkit export``) reads these directories without any strategy plugin.
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from vilgkit import artifacts

MARKER = "vilgkit_dcp.json"
FORMAT = "vilgkit-dcp-1"
METADATA = ".metadata"


class CheckpointIntegrityError(RuntimeError):
    """A sharded checkpoint is incomplete, modified or not ours."""


sha256_file = artifacts.sha256_file  # the one hash helper (vilgkit.artifacts)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file, fsync and rename (never half-written)."""
    artifacts.write_json_atomic(path, data, indent=1, sort_keys=True)


save_file_atomic = artifacts.save_file_atomic  # safetensors via a temporary name and a rename


def is_complete(directory: str | Path) -> bool:
    """True when ``directory`` carries our marker (cheap; :func:`verify` checks the hashes)."""
    return (Path(directory) / MARKER).is_file()


def read_marker(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MARKER
    if not path.is_file():
        raise CheckpointIntegrityError(f"{directory}: no {MARKER}: not a complete vilgkit sharded checkpoint")
    marker = json.loads(path.read_text())
    if marker.get("format") != FORMAT:
        raise CheckpointIntegrityError(f"{path}: unknown format {marker.get('format')!r} (expected {FORMAT})")
    return marker


def verify(directory: str | Path, files: list[str] | None = None) -> dict[str, Any]:
    """Check the marker's hashes (of ``files``, default all; ``.metadata`` always); returns the marker."""
    directory = Path(directory)
    marker = read_marker(directory)
    hashes: dict[str, str] = marker["files"]
    if METADATA not in hashes:
        raise CheckpointIntegrityError(f"{directory}: the marker lists no {METADATA}")
    names = sorted(set(hashes) if files is None else set(files) | {METADATA})
    for name in names:
        path = directory / name
        if name not in hashes:
            raise CheckpointIntegrityError(f"{directory}: {name} is not listed in the marker")
        if not path.is_file():
            raise CheckpointIntegrityError(f"{directory}: {name} is missing")
        if sha256_file(path) != hashes[name]:
            raise CheckpointIntegrityError(f"{directory}: {name} does not match its hash in {MARKER}")
    return marker


# --------------------------------------------------------------------------- safe metadata


_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", "*"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.planner", "*"),
    ("torch", "Size"),
    ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"), ("torch", "float64"),
    ("torch", "int64"), ("torch", "int32"), ("torch", "int16"), ("torch", "int8"), ("torch", "uint8"),
    ("torch", "bool"), ("torch", "strided"), ("torch", "contiguous_format"), ("torch", "preserve_format"),
    ("torch.serialization", "_get_layout"),  # looks a layout up by name ("torch.strided")
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "tuple"), ("builtins", "slice"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP ``Metadata`` and nothing else (no arbitrary callables)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (module, "*") in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointIntegrityError(f"refusing to unpickle {module}.{name} from checkpoint metadata")


def load_metadata(directory: str | Path) -> Any:
    """Verified, restricted read of DCP's ``.metadata``."""
    directory = Path(directory)
    verify(directory, files=[METADATA])
    return _MetadataUnpickler(io.BytesIO((directory / METADATA).read_bytes())).load()


def safe_reader(directory: str | Path):
    """A DCP ``FileSystemReader`` whose metadata read is verified and restricted."""
    from torch.distributed.checkpoint import FileSystemReader

    class _SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = load_metadata(directory)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _SafeReader(str(directory))


def tensor_only_planner():
    """A DCP load planner that refuses pickled (non-tensor) items."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class _TensorOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):  # noqa: ANN001
            raise CheckpointIntegrityError(
                f"checkpoint item {read_item.dest_index.fqn!r} is pickled bytes; vilgkit never unpickles those"
            )

    return _TensorOnlyPlanner()


# --------------------------------------------------------------------------- consolidation


def consolidate_module(directory: str | Path, key: str) -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors of the module saved under ``key``, loaded on one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    directory = Path(directory)
    marker = verify(directory)
    if key not in marker.get("modules", []):
        raise CheckpointIntegrityError(
            f"{directory}: no module {key!r}; it holds {', '.join(marker.get('modules', [])) or 'none'}"
        )
    metadata = load_metadata(directory)
    template: dict[str, dict[str, torch.Tensor]] = {key: {}}
    for flat, meta in metadata.state_dict_metadata.items():
        path = (metadata.planner_data or {}).get(flat, (flat,))
        if len(path) != 2 or path[0] != key:
            continue
        if not isinstance(meta, TensorStorageMetadata):
            raise CheckpointIntegrityError(f"{directory}: {flat} is not a tensor")
        template[key][path[1]] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    if not template[key]:
        raise CheckpointIntegrityError(f"{directory}: module {key!r} has no tensors")
    dcp.load(template, storage_reader=safe_reader(directory), planner=tensor_only_planner(), no_dist=True)
    return template[key]
