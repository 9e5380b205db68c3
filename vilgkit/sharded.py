"""Sharded checkpoint directories (``torch.distributed.checkpoint``) that are safe to load.

A sharded step directory holds DCP's files (``.metadata`` + ``__<rank>_<i>.distcp`` shards), our
side files (non-tensor state as JSON, small per-rank tensors as safetensors) and, written **last**,
the marker ``vilgkit_dcp.json`` with the SHA-256 of every other file. A directory without a valid
marker is incomplete and is never loaded.

Why the hash: DCP stores ``.metadata`` with ``pickle``, and unpickling runs code. We only open
``.metadata`` when its hash matches our marker, and — because whoever can rewrite the file can
rewrite the marker too — always through an unpickler that allows an exact list of DCP's metadata
classes (:data:`ALLOWED_GLOBALS`; no module wildcards), so a crafted file cannot name a callable.
Shard payloads are raw tensor bytes (read by DCP with ``torch.load(weights_only=True)``); a load
planner here refuses pickled byte items outright.

Core code (``vilgkit export``) reads these directories without any strategy plugin.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path
from typing import Any

import torch

from vilgkit import artifacts
from vilgkit.errors import VilgkitError

MARKER = "vilgkit_dcp.json"
FORMAT = "vilgkit-dcp-1"
METADATA = ".metadata"


class CheckpointIntegrityError(VilgkitError, RuntimeError):
    """A sharded checkpoint is incomplete, modified or not ours (a user-facing error: one line, exit 2;
    also a ``RuntimeError``, what it was before, so callers catching that keep working)."""


sha256_file = artifacts.sha256_file  # the one hash helper (vilgkit.artifacts)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file, fsync and rename (never half-written)."""
    artifacts.write_json_atomic(path, data, indent=1, sort_keys=True)


save_file_atomic = artifacts.save_file_atomic  # safetensors via a temporary name and a rename


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


_DCP_METADATA_CLASSES = (
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
    "_MEM_FORMAT_ENCODING",
)
_DTYPES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "complex64",
    "complex128",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)

# Every global DCP's ``.metadata`` names, each by its exact (module, name) — no module wildcards:
# a module's namespace holds its imports (``torch.distributed.checkpoint.metadata`` holds ``os``),
# so allowing "everything in module M" allows ``M.os.system`` through a protocol-4 dotted name.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("torch.distributed.checkpoint.metadata", n) for n in _DCP_METADATA_CLASSES}
    | {("torch", n) for n in _DTYPES}
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # looks a layout up by its name ("torch.strided")
        ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id: the folder DCP wrote to
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
    }
)


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP ``Metadata`` and nothing else: only the globals in :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise CheckpointIntegrityError(f"refusing to unpickle {module}.{name} from checkpoint metadata")
        return super().find_class(module, name)


def _unpickle_metadata(path: Path) -> Any:
    try:
        return _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except CheckpointIntegrityError as err:
        raise CheckpointIntegrityError(f"{path}: {err}") from None
    except Exception as err:  # truncated or garbage pickle: not a checkpoint we wrote
        raise CheckpointIntegrityError(f"{path}: unreadable DCP metadata ({type(err).__name__}: {err})") from None


def load_metadata(directory: str | Path) -> Any:
    """Verified, restricted read of DCP's ``.metadata``."""
    directory = Path(directory)
    verify(directory, files=[METADATA])
    metadata = _unpickle_metadata(directory / METADATA)
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise CheckpointIntegrityError(f"{directory / METADATA}: holds a {type(metadata).__name__}, not DCP Metadata")
    return metadata


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


def module_tensors(directory: str | Path, key: str) -> dict[str, Any]:
    """``name → TensorStorageMetadata`` (global shape and dtype) of the module saved under ``key``."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    directory = Path(directory)
    marker = verify(directory)
    if key not in marker.get("modules", []):
        raise CheckpointIntegrityError(
            f"{directory}: no module {key!r}; it holds {', '.join(marker.get('modules', [])) or 'none'}"
        )
    metadata = load_metadata(directory)
    found: dict[str, Any] = {}
    for flat, meta in metadata.state_dict_metadata.items():
        path = (metadata.planner_data or {}).get(flat, (flat,))
        if len(path) != 2 or path[0] != key:
            continue
        if not isinstance(meta, TensorStorageMetadata):
            raise CheckpointIntegrityError(f"{directory}: {flat} is not a tensor")
        found[path[1]] = meta
    if not found:
        raise CheckpointIntegrityError(f"{directory}: module {key!r} has no tensors")
    return found


def load_module_tensor(directory: str | Path, key: str, name: str, meta: Any) -> torch.Tensor:
    """One full (unsharded) tensor of a saved module, read on one process from every rank's shards."""
    import torch.distributed.checkpoint as dcp

    template = {key: {name: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)}}
    dcp.load(
        template,
        storage_reader=safe_reader(directory),
        planner=tensor_only_planner(),
        no_dist=True,
    )
    return template[key][name]


def consolidate_module(directory: str | Path, key: str) -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors of the module saved under ``key``, loaded on one process (all at
    once: :func:`stream_module` writes them to a file one at a time)."""
    return {
        name: load_module_tensor(directory, key, name, meta) for name, meta in module_tensors(directory, key).items()
    }


_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def stream_module(
    directory: str | Path,
    key: str,
    out: Path,
    prefix: str = "",
    metadata: dict[str, str] | None = None,
) -> int:
    """Write the tensors of module ``key`` whose names start with ``prefix`` (the prefix removed) to
    the safetensors file ``out``, one tensor in memory at a time; returns how many were written.

    The safetensors layout (an 8-byte little-endian header length, a JSON header of dtypes, shapes
    and byte offsets, then the raw bytes in that order) is known from DCP's metadata before any
    tensor is read, so the header goes first and each tensor follows as soon as it is consolidated.
    The file is written through :func:`vilgkit.artifacts.atomic_write` (temporary name, fsync, rename).
    """
    import struct

    metas = {name: meta for name, meta in sorted(module_tensors(directory, key).items()) if name.startswith(prefix)}
    if not metas:
        return 0
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, meta in metas.items():
        dtype = meta.properties.dtype
        if dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointIntegrityError(f"{directory}: {name} has dtype {dtype}, which safetensors cannot hold")
        size = math.prod(meta.size) * torch.empty((), dtype=dtype).element_size()
        header[name[len(prefix) :]] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(meta.size),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with artifacts.atomic_write(out) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, meta in metas.items():
            tensor = load_module_tensor(directory, key, name, meta).contiguous()
            fh.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            del tensor
    return len(metas)
