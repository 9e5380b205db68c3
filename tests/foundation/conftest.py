"""Fixtures for the foundation tests: an out-of-tree plugin installed as a bare ``*.dist-info``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).parent / "support"
EXAMPLE = ROOT / "docs" / "examples" / "vilgkit-band-attention"


def write_dist_info(site: Path, dist: str, version: str, entry_points: dict[str, str]) -> None:
    """Make ``site`` look like a site-packages holding distribution ``dist`` with these entry points."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[vilgkit]\n{lines}\n")


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    """A directory with the example plugin (real code from docs/examples) and a broken plugin."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(EXAMPLE / "vilgkit_band", site / "vilgkit_band")
    write_dist_info(site, "vilgkit-band-attention", "0.1.0", {"band": "vilgkit_band"})
    (site / "vilgkit_broken_demo.py").write_text("raise ImportError('boom: a dependency is missing')\n")
    write_dist_info(site, "vilgkit-broken-demo", "0.0.1", {"broken": "vilgkit_broken_demo"})
    return site


@pytest.fixture(scope="session")
def support_site(tmp_path_factory) -> Path:
    """The test-support module installed as a plugin (entry point ``toy``), so short names resolve."""
    site = tmp_path_factory.mktemp("support_site")
    shutil.copy(SUPPORT / "vilgkit_toy_support.py", site)
    write_dist_info(site, "vilgkit-toy-support", "0.0.0", {"toy": "vilgkit_toy_support"})
    return site


_SUPPORT_SITE: list[Path] = []


@pytest.fixture(autouse=True)
def _register_support_site(support_site):
    _SUPPORT_SITE[:] = [support_site]


def run_cli(args: list[str], site: Path | None = None, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run ``python -m vilgkit ARGS`` in a subprocess (fresh plugin state, the toy plugin installed)."""
    paths = [str(p) for p in _SUPPORT_SITE] + ([str(site)] if site else [])
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "vilgkit", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120
    )
