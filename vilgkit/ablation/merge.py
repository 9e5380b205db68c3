"""Earlier tables of the same recipe set, read back so one table can hold seeds run elsewhere.

A set's seeds need not run in one invocation or on one machine: ``vilgkit ablation FOLDER --seeds 2
--merge seeds01/ablation.json`` runs seed 2 here and writes the table of all three. What is merged is
each row × seed's measurements exactly as its own invocation recorded them (``per_seed`` of
``ablation.json``: the metrics with their item counts, the training curve), so the intervals are
computed again over the union, never averaged from two tables. A row × seed measured in this
invocation replaces the same pair from a merged record.

Records are JSON (no code is loaded) and are checked against the set: each merged row must be the
same row file of the same folder name, so a table of another set cannot slip in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vilgkit.errors import VilgkitError


def _load(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise VilgkitError(f"--merge {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VilgkitError(f"--merge {path}: not an ablation.json record ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise VilgkitError(f"--merge {path}: not an ablation.json record (no 'rows' list)")
    return record


def _check_row(path: Path, row: Any, rows: dict[int, Path]) -> int:
    if not isinstance(row, dict) or not isinstance(row.get("per_seed"), dict) or "row" not in row:
        raise VilgkitError(f"--merge {path}: a row without 'row' and 'per_seed' (written by another version?)")
    number = int(row["row"])
    recipe = Path(str(row.get("recipe", "")))
    ours = rows.get(number)
    if ours is None or recipe.name != ours.name or recipe.parent.name != ours.parent.name:
        where = f"{ours.parent.name}/{ours.name}" if ours else "no such row"
        raise VilgkitError(
            f"--merge {path}: its row {number} is {recipe.parent.name}/{recipe.name}; this set's row {number}: {where}"
        )
    return number


def read_records(
    paths: list[str], set_rows: list[tuple[int, Path]]
) -> tuple[dict[tuple[int, int], dict[str, Any]], list[dict]]:
    """The measurements of every row × seed in ``paths`` (later files win a pair both hold), checked
    against the set's ``(number, row file)`` list, and what each file was: ``{file, command,
    machine, wall_seconds, pairs}``, plus its stages tagged with the file, as the table's stage list
    shows them."""
    rows = dict(set_rows)
    measured: dict[tuple[int, int], dict[str, Any]] = {}
    sources: list[dict[str, Any]] = []
    for name in paths:
        path = Path(name)
        record = _load(path)
        pairs = []
        for row in record["rows"]:
            number = _check_row(path, row, rows)
            for seed, measurement in row["per_seed"].items():
                measured[(number, int(seed))] = measurement
                pairs.append([number, int(seed)])
        sources.append(
            {
                "file": str(path),
                "command": record.get("command", "?"),
                "machine": record.get("machine", "?"),
                "wall_seconds": record.get("wall_seconds"),
                "pairs": pairs,
                "stages": [{**s, "record": str(path)} for s in record.get("stages") or []],
            }
        )
    return measured, sources
