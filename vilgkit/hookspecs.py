"""Lifecycle hooks a plugin may implement (pluggy). Mark implementations with ``vilgkit.hookimpl``.

A plugin module listed under the ``vilgkit`` entry-point group is imported (which registers its
components in the registries) and then registered with the plugin manager, so any of these
functions it defines are called at the matching moment.
"""

from __future__ import annotations

import argparse
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("vilgkit")
hookimpl = pluggy.HookimplMarker("vilgkit")


@hookspec
def vilgkit_add_cli_arguments(subcommand: str, parser: argparse.ArgumentParser) -> None:
    """Add options to the argparse parser of ``subcommand`` (``run``, ``generate``…)."""


@hookspec
def vilgkit_recipe_loaded(recipe: dict[str, Any], path: str) -> None:
    """Called with the resolved recipe (plain dict) before any component is built."""


@hookspec
def vilgkit_component_built(key: str, component: Any) -> None:
    """Called after a recipe component (``generator``, ``image_tokenizer``…) is instantiated."""


@hookspec
def vilgkit_stage_finished(stage: str, summary: dict[str, Any] | None, run_dir: str) -> None:
    """Called after each stage of ``vilgkit run`` completes."""
