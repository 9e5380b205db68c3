"""In-process CLI calls for the security tests (fast: no interpreter start per call)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def call_cli(args: list[str]) -> CliResult:
    """``vilgkit ARGS`` in this process: exit code (``SystemExit`` included), stdout, stderr."""
    from vilgkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's --help / --version
            code = exc.code if isinstance(exc.code, int) else 0
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


def assert_user_error(res: CliResult, *needles: str) -> str:
    """Exit 2, no traceback, and the error is one line holding every needle; returns that line."""
    assert res.code == 2, (res.code, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def image_file(tmp_path_factory):
    """A small RGB PNG to caption / ask about."""
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path
