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

import contextlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vilgkit import artifacts

# the file helpers strategies and tests import from here are re-exported
from vilgkit.artifacts import CHECKPOINT_MANIFEST as MANIFEST  # noqa: F401
from vilgkit.artifacts import CHECKPOINT_META as META  # noqa: F401
from vilgkit.artifacts import (  # noqa: F401
    DAMAGED_DIR,
    ArtifactError,
    CorruptFileError,
    load_tensors,
    readable,
    save_tensors,
    sha256_file,
    tensor_shapes,
)
from vilgkit.errors import VilgkitError

FORMAT = "vilgkit-checkpoint/1"
_STEP_RE = re.compile(r"^step_(\d{8,})$")

#: fault injection for tests: ``SECONDS`` or ``SECONDS@STEP``: sleep inside a save (every save, or
#: only step STEP's) after the files are written and before the manifest
FAULT_SAVE_DELAY_ENV = "VILGKIT_FAULT_SAVE_DELAY"
#: fault injection for tests: a step number whose save raises before its manifest is written
FAULT_SAVE_FAIL_ENV = "VILGKIT_FAULT_SAVE_FAIL_STEP"
#: fault injection for tests: ``PATH@STEP``: step STEP's save waits (at the same point) until PATH exists
FAULT_SAVE_WAIT_ENV = "VILGKIT_FAULT_SAVE_WAIT"


class CheckpointError(ArtifactError):
    """A checkpoint that cannot be used (corrupt, incomplete, or not matching the model)."""


class DamagedCheckpointError(CheckpointError, CorruptFileError):
    """A step folder whose files differ from its manifest or cannot be read: it is set aside."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


_fsync_path = artifacts.fsync_path


def _problem(directory: Path) -> str | None:
    """Why a step folder is not complete (``None`` when its manifest lists files that all exist at
    their recorded sizes)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError):
        return f"{MANIFEST} is unreadable"
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        return f"{MANIFEST} is not a vilgkit checkpoint manifest"
    for rel, info in manifest["files"].items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        if not isinstance(info, dict) or path.stat().st_size != info.get("bytes"):
            listed = info.get("bytes") if isinstance(info, dict) else "?"
            return f"{rel} is {path.stat().st_size} bytes, the manifest says {listed}"
    return None


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a *complete* step folder, else ``None`` (missing, unparsable or files missing)."""
    if _problem(Path(directory)) is not None:
        return None
    return json.loads((Path(directory) / MANIFEST).read_text())


def verify(directory: Path) -> dict[str, Any]:
    """Check every file's SHA-256 against the manifest; returns the manifest or raises
    ``DamagedCheckpointError`` (a ``CheckpointError``)."""
    directory = Path(directory)
    problem = _problem(directory)
    if problem is not None:
        raise DamagedCheckpointError(f"{directory}: not a complete checkpoint ({problem})")
    manifest = json.loads((directory / MANIFEST).read_text())
    bad = [rel for rel, info in manifest["files"].items() if sha256_file(directory / rel) != info.get("sha256")]
    if bad:
        raise DamagedCheckpointError(
            f"{directory}: hash mismatch in {', '.join(sorted(bad))} (the files changed after saving)"
        )
    return manifest


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``meta.json`` of a step folder (``{}`` when absent)."""
    path = Path(directory) / META
    if not path.is_file():
        return {}
    with readable(path, "a checkpoint's meta.json"):
        meta = json.loads(path.read_text())
    if not isinstance(meta, dict):
        raise DamagedCheckpointError(f"{path} is not a JSON object")
    return meta


class CheckpointManager:
    """Saves, finds, verifies, loads and prunes the step folders of one stage.

    A step folder that is not usable — truncated or missing files, no manifest, hashes that do not
    match, files that cannot be read — is never deleted: it is moved to ``checkpoints/damaged/``
    with a warning, and the next-older checkpoint is used. Temporary ``.tmp-step_*`` folders (a
    save that was interrupted before its manifest) are removed, with a note.

    Args:
        root: the ``checkpoints`` folder of a stage.
        strategy: writes and reads the files of a step (``save_checkpoint`` / ``load_checkpoint``).
        keep: how many complete checkpoints to keep (at least 1; the newest is never deleted).
        warn: prints a warning line (default: ``vilgkit: warning: …`` on stderr).
    """

    def __init__(self, root: Path, strategy: Any, keep: int = 2, warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.strategy = strategy
        self.keep = max(1, int(keep))
        self.warn = warn or artifacts.warn

    # ---------------------------------------------------------------- discovery
    def _steps(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _STEP_RE.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def complete(self) -> list[tuple[int, Path]]:
        """``(step, folder)`` of every complete checkpoint, oldest first."""
        return [(step, path) for step, path in self._steps() if _problem(path) is None]

    def incomplete(self) -> list[tuple[int, Path, str]]:
        """``(step, folder, problem)`` of every step folder that is not complete."""
        return [(step, path, problem) for step, path in self._steps() if (problem := _problem(path)) is not None]

    def latest(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint, or ``None``."""
        found = self.complete()
        return found[-1] if found else None

    def set_aside(self, path: Path, reason: str) -> Path:
        """Move an unusable step folder to ``checkpoints/damaged/`` (kept, never deleted) and warn."""
        target_dir = self.root / DAMAGED_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        n = 1
        while target.exists():
            n += 1
            target = target_dir / f"{path.name}.{n}"
        os.replace(path, target)
        _fsync_path(self.root)
        self.warn(
            f"checkpoint {path} is not usable ({reason}); moved it to {target} (kept for inspection, "
            "delete it when done)"
        )
        return target

    def set_aside_incomplete(self) -> list[Path]:
        """Move every incomplete step folder aside (with a warning each)."""
        return [self.set_aside(path, problem) for _, path, problem in self.incomplete()]

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
                self._remove_unfinished(tmp)
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
        gate, _, at = os.environ.get(FAULT_SAVE_WAIT_ENV, "").rpartition("@")
        if gate and int(at) == step:
            while not os.path.exists(gate):
                time.sleep(0.05)
        if os.environ.get(FAULT_SAVE_FAIL_ENV) == str(step):
            raise RuntimeError(f"injected checkpoint failure at step {step} ({FAULT_SAVE_FAIL_ENV})")

    def _remove_unfinished(self, path: Path) -> None:
        print(f"vilgkit: removing {path}: a save that was interrupted before its manifest was written", flush=True)
        shutil.rmtree(path, ignore_errors=True)

    def prune(self) -> None:
        """Delete all but the newest ``keep`` complete checkpoints and unfinished ``.tmp-step_*``
        saves; incomplete step folders are moved aside (:meth:`set_aside`), never deleted."""
        found = self.complete()
        for _, path in found[: max(0, len(found) - self.keep)]:
            shutil.rmtree(path, ignore_errors=True)
        for child in self.root.iterdir():
            if child.name.startswith(".tmp-step_"):
                self._remove_unfinished(child)
        self.set_aside_incomplete()

    # ---------------------------------------------------------------- load
    def load(self, directory: Path, state: dict[str, Any]) -> dict[str, Any]:
        """Verify the hashes of ``directory``, then let the strategy load it into ``state``.

        Raises:
            DamagedCheckpointError: a hash differs, or a file cannot be read (the message names it).
            CheckpointError: the checkpoint does not fit the model (listed).
        """
        manifest = verify(directory)
        with damaged_as_error(directory):
            self.strategy.load_checkpoint(directory, state)
        return manifest

    def load_latest_valid(self, state: dict[str, Any], warn=None) -> tuple[int, Path] | None:
        """Load the newest usable checkpoint; a damaged newer one is moved aside with a warning."""
        if warn is not None:
            self.warn = warn
        self.set_aside_incomplete()
        for step, path in reversed(self.complete()):
            try:
                self.load(path, state)
            except DamagedCheckpointError as err:
                self.set_aside(path, str(err).removeprefix(f"{path}: "))
                continue
            return step, path
        return None


@contextlib.contextmanager
def damaged_as_error(directory: Path):
    """Inside: an exception from reading a step folder's files becomes :class:`DamagedCheckpointError`
    (a user's error such as a model that does not fit stays what it is)."""
    try:
        yield
    except DamagedCheckpointError:
        raise
    except CorruptFileError as err:
        raise DamagedCheckpointError(str(err)) from err
    except (VilgkitError, MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # SafetensorError, UnpicklingError, KeyError, a sharded integrity error…
        detail = artifacts.first_line(err)
        raise DamagedCheckpointError(f"{directory}: cannot be read ({type(err).__name__}: {detail})") from err


# -------------------------------------------------------------------- file helpers for strategies


def write_json(path: Path, data: Any) -> None:
    """Write JSON (non-JSON leaves such as paths become strings)."""
    Path(path).write_text(json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    with readable(Path(path), "a JSON file"):
        return json.loads(Path(path).read_text())


def check_model_matches(model: nn.Module, path: Path) -> None:
    """Raise ``CheckpointError`` listing missing, unexpected and re-shaped tensors."""
    problem = artifacts.weights_mismatch(model, tensor_shapes(path))
    if problem:
        raise CheckpointError(f"{path} does not fit the {type(model).__name__}: {problem}")


def save_model_weights(path: Path, model: nn.Module) -> None:
    """The module's state dict as safetensors (tied weights stored once)."""
    save_tensors(path, model.state_dict(), {"format": "pt", "class": type(model).__qualname__})


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a :func:`save_model_weights` file into ``model`` in place, shapes checked first (and,
    for a run's file, its hash against the run's manifest)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    artifacts.load_weights(model, path, error=CheckpointError)


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
    with readable(Path(path), "an optimizer state (torch.save, weights only)"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state)
