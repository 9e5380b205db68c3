"""Run files without the manifest: SHA-256 hashes, atomic writes, safetensors files (tied weights
stored once), and a file that cannot be read turned into one error naming it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vilgkit.errors import VilgkitError


class ArtifactError(VilgkitError):
    """A run file that cannot be used: changed since it was written, unreadable, or not fitting."""


class CorruptFileError(ArtifactError):
    """A file that differs from what was written (size, hash) or cannot be deserialised."""


# ------------------------------------------------------------------------------------ hashing


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_HASH_CACHE: dict[tuple[str, int, int, int], str] = {}


def cached_sha256(path: Path) -> str:
    """:func:`sha256_file`, remembered per (path, size, mtime, inode) within this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"bytes", "sha256", "mtime_ns"}`` of a file (the modification time only tells
    :meth:`RunDir.record_tree` what to hash again; verification uses size and hash)."""
    path = Path(path)
    st = path.stat()
    return {"bytes": st.st_size, "sha256": cached_sha256(path), "mtime_ns": st.st_mtime_ns}


# ------------------------------------------------------------------------------------ atomic writes


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a no-op where the platform refuses directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed over ``path``
    (and the folder fsynced), so a reader sees the old file or the whole new one, never a part.

    Raises:
        ArtifactError: the file cannot be written (disk full, read-only folder…), naming it; the
            temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ArtifactError(f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """JSON (non-JSON leaves such as paths become strings), written atomically."""
    return write_text_atomic(
        path, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str)
    )


def save_file_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """A name → tensor dict as safetensors, atomically (tied weights stored once, see :func:`save_tensors`)."""
    with atomic_write(path) as tmp:
        save_tensors(tmp, tensors, metadata)
    return Path(path)


# ------------------------------------------------------------------------------------ tensor files


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a name → tensor dict as safetensors; tensors sharing storage (tied weights) are stored
    once and their other names recorded in the metadata, restored by :func:`load_tensors`."""
    from safetensors.torch import save_file

    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach()
        if t.numel() == 0:
            unique[name] = t.to("cpu").contiguous()
            continue
        ptr = t.untyped_storage().data_ptr()
        key = (ptr, t.storage_offset(), tuple(t.shape), t.dtype)
        if key in views:  # the same tensor under a second name (tied weights)
            aliases[name] = views[key]
            continue
        views[key] = name
        # safetensors refuses tensors that share memory: copy partial views of a seen storage
        shared = ptr in storages
        storages.add(ptr)
        needs_copy = shared or t.device.type != "cpu" or not t.is_contiguous()
        unique[name] = t.to("cpu").contiguous().clone() if needs_copy else t
    meta = dict(metadata or {})
    if aliases:
        meta["vilgkit_aliases"] = json.dumps(aliases)
    save_file(unique, str(path), metadata=meta)


def first_line(err: BaseException, limit: int = 160) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def readable(path: Path, what: str = "a safetensors file") -> Iterator[None]:
    """Turn a deserialiser's exception into one ArtifactError naming the file."""
    try:
        yield
    except (ArtifactError, FileNotFoundError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # SafetensorError, UnicodeDecodeError, json errors, KeyError…
        detail = first_line(err)
        raise CorruptFileError(f"{path} is not {what} that vilgkit can read ({type(err).__name__}: {detail})") from err


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_tensors` (aliases come back as the same tensor). Not verified: use
    :func:`load_weights` for run files."""
    from safetensors import safe_open

    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    with readable(path):
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name)
            aliases = json.loads((fh.metadata() or {}).get("vilgkit_aliases", "{}"))
        for name, target in aliases.items():
            out[name] = out[target]
    return out


def tensor_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (header only)."""
    from safetensors import safe_open

    path = Path(path)
    with readable(path), safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shapes in a safetensors file, read from its header only."""
    from safetensors import safe_open

    path = Path(path)
    with readable(path):
        with safe_open(str(path), framework="pt") as fh:
            shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
            aliases = json.loads((fh.metadata() or {}).get("vilgkit_aliases", "{}"))
        shapes.update({name: shapes[target] for name, target in aliases.items()})
    return shapes


def weights_mismatch(module: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """``None`` when ``shapes`` (name → shape) fit ``module``'s state dict, else what differs:
    ``missing: …; unexpected: …; shape changed: k: file [..] vs model [..]``."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v) for k, v in shapes.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    reshaped = sorted(
        f"{k}: file {list(have[k])} vs model {list(want[k])}" for k in set(have) & set(want) if have[k] != want[k]
    )
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape changed", reshaped)):
        if items:
            shown = items[:20] + ([f"... {len(items) - 20} more"] if len(items) > 20 else [])
            parts.append(f"{title}: " + ", ".join(shown))
    return "; ".join(parts) or None


def load_state_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path, error: type[Exception] = ArtifactError
) -> None:
    """``load_state_dict(strict=True)`` that reports missing, unexpected and re-shaped keys in one line."""
    problem = weights_mismatch(module, {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise error(f"{source} does not fit the {type(module).__name__}: {problem}")
    module.load_state_dict(dict(state), strict=True)
