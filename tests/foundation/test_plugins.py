"""Plugin discovery through entry points: out-of-tree plugins, broken ones, blocking, autoload off."""

from __future__ import annotations

import json
import types

import pytest

from vilgkit.registry import VilgRegistry

from .conftest import run_cli


def _recipe(tmp_path, attention="BandAttention"):
    path = tmp_path / "r.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "stages:\n"
        "  - class_path: EchoStage\n"
        "    init_args:\n"
        "      name: echo\n"
        f"      attention: {{class_path: {attention}, init_args: {{width: 1}}}}\n"
    )
    return path


def test_out_of_tree_plugin_is_discovered_and_usable(plugin_site, tmp_path):
    res = run_cli(["plugins"], site=plugin_site)
    assert res.returncode == 0, res.stderr
    line = next(row for row in res.stdout.splitlines() if "BandAttention" in row)
    assert "band (vilgkit-band-attention 0.1.0)" in line
    # the broken plugin is reported with its name, distribution and exception; the rest still works
    assert "broken (vilgkit-broken-demo 0.0.1" in res.stdout
    assert "ImportError: boom: a dependency is missing" in res.stdout

    res = run_cli(["run", str(_recipe(tmp_path))], site=plugin_site)
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "run" / "echo" / "echo.json").read_text())
    # 2 text + 4 image positions; band width 1: text rows see 2 keys each, image rows 2 text + itself
    assert out["allowed"] == 2 * 2 + 4 * 3
    resolved = (tmp_path / "run" / "recipe.resolved.yaml").read_text()
    assert "vilgkit_band.BandAttention" in resolved and "vilgkit-band-attention 0.1.0" in resolved


def test_blocked_plugin_is_not_loaded(plugin_site, tmp_path):
    res = run_cli(["plugins"], site=plugin_site, env={"VILGKIT_BLOCK_PLUGINS": "band,broken"})
    assert res.returncode == 0
    assert "BandAttention" not in res.stdout and "vilgkit-broken-demo" not in res.stdout
    res = run_cli(["run", str(_recipe(tmp_path))], site=plugin_site, env={"VILGKIT_BLOCK_PLUGINS": "band"})
    assert res.returncode == 2
    assert "unknown class_path 'BandAttention'" in res.stderr
    assert "Traceback" not in res.stderr


def test_disable_autoload_loads_no_entry_points(plugin_site):
    res = run_cli(["plugins"], site=plugin_site, env={"VILGKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert res.returncode == 0
    assert "BandAttention" not in res.stdout
    assert "vilgkit_attention" not in res.stdout and "attention (vilgkit" not in res.stdout


def test_duplicate_registration_names_both_modules():
    reg = VilgRegistry("demo")
    first = types.new_class("Thing")
    first.__module__ = "plugin_one.things"
    second = types.new_class("Thing")
    second.__module__ = "plugin_two.things"
    reg.register_module(module=first)
    with pytest.raises(KeyError) as err:
        reg.register_module(module=second)
    assert "plugin_one.things.Thing" in str(err.value) and "plugin_two.things.Thing" in str(err.value)
    reg.register_module(module=first)  # the same class again (a re-import) is harmless
