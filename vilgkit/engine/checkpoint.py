"""Atomic, verified, pruned checkpoints (the step directories under ``<stage>/checkpoints``).

A save goes: the strategy writes its files into ``.tmp-step_XXXXXXXX`` → every file is fsynced and
hashed → ``MANIFEST.json`` (file list, sizes, SHA-256) is written and fsynced **last** → the folder
is renamed to ``step_XXXXXXXX`` and the parent fsynced. A step folder counts only with a manifest
whose files all exist at their recorded sizes, so a crash at any point of a save leaves nothing that
resume would pick up. Loading verifies every hash before any byte is deserialised, and our own files
are read only as safetensors, JSON or ``torch.load(weights_only=True)``: nothing is unpickled.

The helpers at the bottom (model/optimizer/JSON files) are what strategies use to write their part.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vilgkit.errors import VilgkitError

MANIFEST = "MANIFEST.json"
META = "meta.json"
FORMAT = "vilgkit-checkpoint/1"
_STEP_RE = re.compile(r"^step_(\d{8,})$")

#: fault injection for tests: ``SECONDS`` or ``SECONDS@STEP``: sleep inside a save (every save, or
#: only step STEP's) after the files are written and before the manifest
FAULT_SAVE_DELAY_ENV = "VILGKIT_FAULT_SAVE_DELAY"
#: fault injection for tests: a step number whose save raises before its manifest is written
FAULT_SAVE_FAIL_ENV = "VILGKIT_FAULT_SAVE_FAIL_STEP"


class CheckpointError(VilgkitError):
    """A checkpoint that cannot be used (corrupt, incomplete, or not matching the model)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a *complete* step folder, else ``None`` (missing, unparsable or files missing)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        return None
    for rel, info in manifest["files"].items():
        path = directory / rel
        if not path.is_file() or path.stat().st_size != info.get("bytes"):
            return None
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    """Check every file's SHA-256 against the manifest; returns the manifest or raises ``CheckpointError``."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise CheckpointError(f"{directory}: not a complete checkpoint (no valid {MANIFEST})")
    bad = [rel for rel, info in manifest["files"].items() if sha256_file(directory / rel) != info["sha256"]]
    if bad:
        raise CheckpointError(f"{directory}: hash mismatch in {', '.join(sorted(bad))} (the files changed after saving)")
    return manifest


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``meta.json`` of a step folder (``{}`` when absent)."""
    path = Path(directory) / META
    return json.loads(path.read_text()) if path.is_file() else {}


class CheckpointManager:
    """Saves, finds, verifies, loads and prunes the step folders of one stage.

    Args:
        root: the ``checkpoints`` folder of a stage.
        strategy: writes and reads the files of a step (``save_checkpoint`` / ``load_checkpoint``).
        keep: how many complete checkpoints to keep (at least 1; the newest is never deleted).
    """

    def __init__(self, root: Path, strategy: Any, keep: int = 2) -> None:
        self.root = Path(root)
        self.strategy = strategy
        self.keep = max(1, int(keep))

    # ---------------------------------------------------------------- discovery
    def complete(self) -> list[tuple[int, Path]]:
        """``(step, folder)`` of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _STEP_RE.match(child.name)
            if match and child.is_dir() and read_manifest(child) is not None:
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint, or ``None``."""
        found = self.complete()
        return found[-1] if found else None

    # ---------------------------------------------------------------- save
    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
        """Write ``state`` as step ``step`` atomically; prunes old checkpoints afterwards.

        ``meta`` (JSON: the resolved recipe, the trainer config...) is written by the main rank as
        ``meta.json``, readable without knowing the strategy's file layout (:func:`read_meta`).
        """
        strategy = self.strategy
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{step_dir_name(step)}"
        if strategy.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a crashed save of the same step
                shutil.rmtree(tmp)
            tmp.mkdir()
        strategy.barrier()
        strategy.save_checkpoint(tmp, state)
        strategy.barrier()
        if strategy.is_main:
            if meta is not None:
                write_json(tmp / META, meta)
            self._inject_faults(step)
            files = {}
            for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                _fsync_path(path)
                files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            manifest = {"format": FORMAT, "step": step, "created": time.time(), "files": files}
            with open(tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_path(tmp)
            if final.exists():  # re-saving a step (never the case in a normal run): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_path(self.root)
            self.prune()
        strategy.barrier()
        return final

    @staticmethod
    def _inject_faults(step: int) -> None:
        spec = os.environ.get(FAULT_SAVE_DELAY_ENV, "")
        if spec:
            seconds, _, at = spec.partition("@")
            if not at or int(at) == step:
                time.sleep(float(seconds))
        if os.environ.get(FAULT_SAVE_FAIL_ENV) == str(step):
            raise RuntimeError(f"injected checkpoint failure at step {step} ({FAULT_SAVE_FAIL_ENV})")

    def prune(self) -> None:
        """Delete all but the newest ``keep`` complete checkpoints, and stale temporary folders."""
        found = self.complete()
        for _, path in found[: max(0, len(found) - self.keep)]:
            shutil.rmtree(path, ignore_errors=True)
        for child in self.root.iterdir():
            if child.name.startswith(".tmp-step_") or (_STEP_RE.match(child.name) and read_manifest(child) is None):
                shutil.rmtree(child, ignore_errors=True)

    # ---------------------------------------------------------------- load
    def load(self, directory: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Verify the hashes of ``directory``, then let the strategy load it into ``state``."""
        manifest = verify(directory)
        self.strategy.load_checkpoint(directory, state)
        return manifest

    def load_latest_valid(self, state: dict[str, Any], warn=print) -> tuple[int, Path] | None:
        """Load the newest checkpoint whose hashes verify; a corrupt newer one is reported and skipped."""
        for step, path in reversed(self.complete()):
            try:
                self.load(path, state)
            except CheckpointError as err:
                warn(f"vilgkit: skipping checkpoint: {err}")
                continue
            return step, path
        return None


# -------------------------------------------------------------------- file helpers for strategies


def write_json(path: Path, data: Any) -> None:
    """Write JSON (non-JSON leaves such as paths become strings)."""
    Path(path).write_text(json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a name → tensor dict as safetensors; tensors sharing storage (tied weights) are stored
    once and their other names recorded in the metadata, restored by :func:`load_tensors`."""
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


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_tensors` (aliases come back as the same tensor)."""
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as fh:
        for name in fh.keys():
            out[name] = fh.get_tensor(name)
        aliases = json.loads((fh.metadata() or {}).get("vilgkit_aliases", "{}"))
    for name, target in aliases.items():
        out[name] = out[target]
    return out


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes in a safetensors file, read from its header only."""
    with safe_open(str(path), framework="pt") as fh:
        shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}
        aliases = json.loads((fh.metadata() or {}).get("vilgkit_aliases", "{}"))
    shapes.update({name: shapes[target] for name, target in aliases.items()})
    return shapes


def check_model_matches(model: nn.Module, path: Path) -> None:
    """Raise ``CheckpointError`` listing missing, unexpected and re-shaped tensors."""
    have = tensor_shapes(path)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    reshaped = sorted(
        f"{k}: checkpoint {list(have[k])} vs model {list(want[k])}" for k in set(have) & set(want) if have[k] != want[k]
    )
    if missing or unexpected or reshaped:
        lines = [f"{path} does not match {type(model).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape changed", reshaped)):
            if items:
                shown = items[:20] + ([f"... {len(items) - 20} more"] if len(items) > 20 else [])
                lines.append(f"  {title}: " + ", ".join(shown))
        raise CheckpointError("\n".join(lines))


def save_model_weights(path: Path, model: nn.Module) -> None:
    """The module's state dict as safetensors (tied weights stored once)."""
    save_tensors(path, model.state_dict(), {"format": "pt", "class": type(model).__qualname__})


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a :func:`save_model_weights` file into ``model`` in place, shapes checked first."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    check_model_matches(model, path)
    device = next((t.device for t in model.state_dict().values()), torch.device("cpu"))
    model.load_state_dict(load_tensors(path, device), strict=True)


def save_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Optimizer state via ``torch.save`` (tensors and plain containers only: loadable with
    ``weights_only=True``)."""
    # serialised in memory first: torch.save's zip writer reports a full disk as "unexpected pos";
    # a plain write raises OSError(ENOSPC), which the CLI prints as "no space left … FILE"
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    try:
        Path(path).write_bytes(buffer.getvalue())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Inverse of :func:`save_optimizer`; never unpickles arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable optimizer state ({type(err).__name__})") from None
    optimizer.load_state_dict(state)
