"""What one row × seed measured: the numbers its evaluation stages wrote, read back from its run.

``EvaluateReconstruction`` writes ``<stage>/metrics.json``, ``Evaluate`` writes ``<stage>/eval.json``;
each reported metric (:data:`vilgkit.ablation.config.METRICS`) is taken with the number of items it
was measured on (for proportions: the bootstrap's item level). The training curve named by the
set's ``loss_curve`` comes from that stage's ``metrics.jsonl``; its last value is ``final_loss``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vilgkit.ablation.config import METRICS
from vilgkit.ablation.store import stage_name
from vilgkit.errors import VilgkitError

RECONSTRUCTION_FILE = "metrics.json"  # EvaluateReconstruction
EVAL_FILE = "eval.json"  # Evaluate (the harness)
CURVE_FILE = "metrics.jsonl"  # the Trainer's log


def _kind(node: dict[str, Any]) -> str | None:
    short = str(node.get("class_path", "")).rpartition(".")[2]
    return {"EvaluateReconstruction": RECONSTRUCTION_FILE, "Evaluate": EVAL_FILE}.get(short)


def _reconstruction(record: dict[str, Any]) -> tuple[dict[str, tuple[float, int | None]], dict[str, str]]:
    m, settings = record["metrics"], record.get("settings") or {}
    n = int(settings.get("num_samples", 0)) * int(settings.get("repeats", 1))
    out = {k: (float(m[k]), n if METRICS[k].count_key else None) for k in METRICS if k in m}
    return out, {"generator": record.get("generator", "—"), "reconstructor": record.get("reconstructor", "—")}


def _evaluation(record: dict[str, Any]) -> dict[str, tuple[float, int | None]]:
    m = record["metrics"]
    out = {}
    for key, spec in METRICS.items():
        if key not in m:
            continue
        count = None
        if spec.count_key:
            count = int(m.get(spec.count_key) or record.get(spec.count_key) or record.get("num_samples") or 0) or None
        out[key] = (float(m[key]), count)
    return out


def loss_curve(stage_dir: Path, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` in a training stage's ``metrics.jsonl``."""
    path = stage_dir / CURVE_FILE
    if not path.is_file():
        raise VilgkitError(f"{path} is missing: loss_curve names a stage that logged no training curve")
    points = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if key in row and isinstance(row[key], (int, float)):
            points.append((int(row["step"]), float(row[key])))
    if not points:
        raise VilgkitError(f"{path} has no {key!r} values (loss_curve.key)")
    return points


def read_row(recipe: dict[str, Any], run_dir: Path, where: str, curve: dict[str, str] | None = None) -> dict[str, Any]:
    """The measurements of one row × seed: ``metrics`` (key → ``[value, n or None]``), labels,
    the evaluation stages read and, with ``curve``, the training curve."""
    metrics: dict[str, tuple[float, int | None]] = {}
    source: dict[str, str] = {}
    labels: dict[str, str] = {}
    for node in recipe.get("stages") or []:
        kind = _kind(node)
        if kind is None:
            continue
        name = stage_name(node)
        record = json.loads((run_dir / name / kind).read_text())
        if kind == RECONSTRUCTION_FILE:
            found, labels = _reconstruction(record)
        else:
            found = _evaluation(record)
        for key, value in found.items():
            if key in metrics:
                raise VilgkitError(
                    f"{where}: {key} is measured by both {source[key]} and {name}; give one of them other metrics"
                )
            metrics[key], source[key] = value, name
    if not source:
        raise VilgkitError(f"{where}: the row has no Evaluate or EvaluateReconstruction stage")
    out: dict[str, Any] = {"metrics": {k: list(v) for k, v in metrics.items()}, "labels": labels, "source": source}
    if curve is not None and curve["stage"] in {stage_name(n) for n in recipe.get("stages") or []}:
        points = loss_curve(run_dir / curve["stage"], curve["key"])
        out["curve"] = points
        out["metrics"]["final_loss"] = [points[-1][1], None]
    return out
