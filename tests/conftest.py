"""Fixtures shared across test folders: one tiny debug run (``recipes/debug/gen_tiny.yaml``)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBUG_RECIPE = ROOT / "recipes" / "debug" / "gen_tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Run every stage of the debug recipe once (≈20 s on 2 cores); returns the run directory.

    Shared by tests/app and tests/serve (one build per session).
    """
    import torch

    from vilgkit.engine.runner import run

    torch.set_num_threads(1)  # the reference losses were recorded single-threaded
    run_dir = tmp_path_factory.mktemp("gen_tiny")
    run([str(DEBUG_RECIPE)], ["--run_dir", str(run_dir)])
    return run_dir
