"""Fixtures of the strategy tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def run_in_one_process(monkeypatch) -> Callable[..., int]:
    """``vilgkit run RECIPE --run_dir RUN_DIR ARGS...`` in this process, as the only rank.

    Returns a function of ``(recipe, run_dir, *args)`` that returns the exit status. ``WORLD_SIZE``
    is removed from the environment first: left there (a torchrun parent), it would make the run a
    rank of a larger one.
    """
    from vilgkit.cli import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def run(recipe: str, run_dir: Path, *args: str) -> int:
        return main(["run", recipe, "--run_dir", str(run_dir), *args])

    return run
