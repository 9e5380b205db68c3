"""A tiny evaluated run and a real uvicorn server on a free local port, shared by the serve tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest


def require_serve_extra() -> None:
    """Skip (saying why) when the [serve] extra or httpx is missing; the pure-Python tests still run."""
    for module in ("fastapi", "uvicorn", "multipart", "httpx"):
        pytest.importorskip(
            module,
            reason=f"{module} is missing: pip install -e '.[dev]' (the [serve] extra + httpx)",
        )


def evaluate_run(run_dir: Path) -> None:
    """Run the Evaluate stage on a tiny run (2 samples), so it has inference.json and eval.json."""
    import yaml

    from vilgkit.interfaces import RunContext
    from vilgkit.plugins import get_plugin_manager
    from vilgkit.registry import RERANKERS
    from vilgkit.stages.evaluate import Evaluate

    get_plugin_manager()
    recipe = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    stage = Evaluate(
        metrics=["shapes", "vqa"],
        num_samples=2,
        batch_size=2,
        num_candidates=2,
        top_k=4,
        cfg_scale=1.5,
        reranker=RERANKERS.get("SelfReranker")(),
        report_examples=1,
        device="cpu",
    )
    stage.run(RunContext(run_dir=run_dir, components={}, recipe=recipe, seed=0))


@pytest.fixture(scope="session")
def served_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run, evaluated (saved settings: 2 candidates self-reranked, top_k 4, cfg 1.5)."""
    run_dir = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(tiny_run, run_dir)
    evaluate_run(run_dir)
    return run_dir


class LiveServer:
    """uvicorn serving ``app`` in a thread on a socket bound to a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        require_serve_extra()
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="session")
def server(served_run):
    """The real server over the evaluated tiny run (limits small enough to reach in tests)."""
    require_serve_extra()
    from vilgkit import Pipeline
    from vilgkit.serve import Limits, create_app

    pipe = Pipeline.from_run_dir(served_run, device="cpu")
    limits = Limits(
        max_prompt_chars=120,
        max_candidates=4,
        max_upload_bytes=200_000,
        max_image_pixels=1024 * 1024,
    )
    live = LiveServer(create_app(pipe, limits=limits, window_s=0.05, max_batch=16))
    yield live
    live.stop()
