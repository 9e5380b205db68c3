"""The training engine and the stage runner.

Public API: :class:`Trainer` (the loop), :class:`StatefulLoader` (resumable batches),
:class:`TrainerConfig`, :class:`CheckpointManager`, :func:`load_model_weights` (read a stage's
exported ``model.safetensors``) and :class:`NonFiniteLossError`. Imported lazily so that
``import vilgkit.engine.config`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": "vilgkit.engine.trainer",
    "Callback": "vilgkit.engine.trainer",
    "NonFiniteLossError": "vilgkit.engine.trainer",
    "default_strategy": "vilgkit.engine.trainer",
    "StatefulLoader": "vilgkit.engine.loader",
    "TrainerConfig": "vilgkit.engine.config",
    "CheckpointManager": "vilgkit.engine.checkpoint",
    "CheckpointError": "vilgkit.engine.checkpoint",
    "load_model_weights": "vilgkit.engine.checkpoint",
    "save_model_weights": "vilgkit.engine.checkpoint",
    "IncompatibleResumeError": "vilgkit.engine.compat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vilgkit.engine' has no attribute {name!r}")
