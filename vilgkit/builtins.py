"""Imports the core modules that register components (data sets, generators, metrics, stages).

Core components are not plugins, but they register in the same registries; importing this module
makes them visible to recipes and to ``vilgkit plugins``. Modules that have not landed yet are
skipped.
"""

from __future__ import annotations

import importlib

CORE_MODULES = [
    "vilgkit.data",
    "vilgkit.models",
    "vilgkit.stages",
    "vilgkit.metrics",
]

for _name in CORE_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as _err:
        if _err.name != _name and not _name.startswith(str(_err.name)):
            raise
