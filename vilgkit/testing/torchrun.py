"""Multi-process tests: ``torchrun`` on this machine, one thread per rank, from one helper."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous that starts right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(
    *args: str | Path,
    nproc: int = 2,
    timeout: float = 300,
    cwd: Path | None = None,
    pythonpath: Sequence[Path] = (),
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node=NPROC ARGS...`` with ``OMP_NUM_THREADS=1``.

    ``args`` are what follows the launcher's own flags (``-m vilgkit run RECIPE`` or a script and its
    arguments); ``pythonpath`` folders are put in front of ``PYTHONPATH``. The launcher runs in a
    process group of its own so that on a timeout its workers die with it, never orphaned; then
    :class:`subprocess.TimeoutExpired` is raised with what they printed.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), os.environ.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        *map(str, args),
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
