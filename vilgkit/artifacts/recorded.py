"""Writing run files by path: atomically, and recorded in the manifest of the run that holds them
(nothing is recorded outside a run). The readers, verified the same way, are in :mod:`.rundir`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vilgkit.artifacts.files import save_file_atomic, write_json_atomic, write_text_atomic
from vilgkit.artifacts.layout import outside_manifest
from vilgkit.artifacts.rundir import RunDir


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """:func:`save_file_atomic`, recorded in the manifest of the run that holds ``path`` (if any)."""
    full = save_file_atomic(dict(tensors), path, metadata)
    _record_in_owner(full)
    return full


def write_json(path: str | Path, data: Any, **kwargs: Any) -> Path:
    """:func:`write_json_atomic`, recorded in the manifest of the run that holds ``path`` (if any)."""
    full = write_json_atomic(path, data, **kwargs)
    _record_in_owner(full)
    return full


def write_text(path: str | Path, text: str) -> Path:
    """:func:`write_text_atomic`, recorded in the manifest of the run that holds ``path`` (if any)."""
    full = write_text_atomic(path, text)
    _record_in_owner(full)
    return full


def record_file(*paths: str | Path) -> None:
    """Hash files written by someone else (a plugin's ``save``) into their run's manifest."""
    for path in paths:
        _record_in_owner(Path(path))


def record_tree(folder: str | Path) -> None:
    """:meth:`RunDir.record_tree` for the run that holds ``folder`` (if any)."""
    run = RunDir.owning(folder)
    if run is not None:
        run.record_tree(Path(folder).resolve())


def _record_in_owner(path: Path) -> None:
    run = RunDir.owning(path)
    if run is not None and not outside_manifest(run.relative(path.resolve())):
        run.record(path.resolve())
