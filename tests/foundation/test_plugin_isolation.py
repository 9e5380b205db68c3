"""Plugins are isolated: whatever one does at import (``sys.exit``, an exception, taking a name core
or a built-in plugin holds) or in a hook, the others and the run keep working, and the user is
told which plugin it was."""

from __future__ import annotations

import json

from .conftest import run_cli, write_dist_info


def _echo_recipe(tmp_path, attention: str | None = None):
    path = tmp_path / "r.yaml"
    att = f"      attention: {{class_path: {attention}}}\n" if attention else ""
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\nstages:\n  - class_path: EchoStage\n    init_args:\n      name: echo\n{att}"
    )
    return path


def _site(tmp_path, plugins: dict[str, str]):
    """A site dir with one distribution per plugin: ``{entry-point name: module source}``."""
    site = tmp_path / "site"
    site.mkdir()
    for name, source in plugins.items():
        (site / f"vk_{name}.py").write_text(source)
        write_dist_info(site, f"vk-{name}", "1.0", {name: f"vk_{name}"})
    return site


def _one_line_about(stderr: str, plugin: str) -> str:
    lines = [line for line in stderr.splitlines() if f"'{plugin}'" in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_sys_exit_at_import_is_contained(tmp_path):
    site = _site(tmp_path, {"quitter": "import sys\nsys.exit(7)\n"})
    res = run_cli(["plugins"], site=site)
    assert res.returncode == 0, res.stderr
    assert "SystemExit: 7" in _one_line_about(res.stderr, "quitter")
    assert "quitter (vk-quitter 1.0" in res.stdout and "SparseAttention" in res.stdout
    res = run_cli(["run", str(_echo_recipe(tmp_path))], site=site)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "echo" / "echo.json").is_file()


def test_taken_names_stay_with_core_and_built_in_plugins(tmp_path):
    # entry-point names that sort before the built-in ones: load order must not decide who wins
    site = _site(
        tmp_path,
        {
            "aaa_data": "from vilgkit.registry import DATASETS\n\n@DATASETS.register_module()\nclass ShapesDataset:\n"
            "    pass\n",
            "aab_dense": "from vilgkit.registry import ATTENTION_PATTERNS\n\n"
            "@ATTENTION_PATTERNS.register_module()\nclass MyOwnAttention:\n    pass\n\n"
            "@ATTENTION_PATTERNS.register_module()\nclass DenseAttention:\n    pass\n",
        },
    )
    res = run_cli(["plugins"], site=site)
    assert res.returncode == 0, res.stderr
    line = _one_line_about(res.stderr, "aaa_data")
    assert "vilgkit.data.shapes.dataset.ShapesDataset (kept)" in line and "vk_aaa_data.ShapesDataset" in line
    line = _one_line_about(res.stderr, "aab_dense")
    assert "vilgkit.models.dense_attention.DenseAttention (kept)" in line and "vk_aab_dense.DenseAttention" in line
    rows = {r.split()[0]: r for r in res.stdout.splitlines() if r.startswith("  ") and len(r.split()) > 1}
    assert "vilgkit core" in rows["ShapesDataset"]
    assert "vilgkit core" in rows["DenseAttention"] and "attention (vilgkit" in rows["SparseAttention"]
    # what the refused plugin registered before failing is rolled back, not half-usable
    assert "MyOwnAttention" not in rows


def test_failing_hook_is_reported_and_the_run_goes_on(tmp_path):
    site = _site(
        tmp_path,
        {
            "hooky": "from vilgkit.hookspecs import hookimpl\n\n@hookimpl\n"
            "def vilgkit_stage_finished(stage, summary, run_dir):\n"
            "    raise RuntimeError('hook broke')\n"
        },
    )
    res = run_cli(["run", str(_echo_recipe(tmp_path))], site=site)
    assert res.returncode == 0, res.stderr
    line = _one_line_about(res.stderr, "hooky")
    assert "vilgkit_stage_finished" in line and "RuntimeError: hook broke" in line
    assert json.loads((tmp_path / "run" / "echo" / "echo.json").read_text())["text"] == "hi"


def test_unknown_class_names_plugins_that_failed(tmp_path):
    site = _site(tmp_path, {"banded": "raise ImportError('needs the missing package bandlib')\n"})
    res = run_cli(["run", str(_echo_recipe(tmp_path, attention="BandedAttention"))], site=site)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "unknown class_path 'BandedAttention'" in last
    assert "failed to load" in last and "'banded' (vk-banded 1.0): ImportError: needs the missing package" in last
