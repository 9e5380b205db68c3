"""``vilgkit export RUN [--stage S] --out DIR``: a sharded checkpoint → a single-device run directory.

The newest complete sharded (DCP) checkpoint of the stage is verified (hashes in our marker),
consolidated on one process without building the model — streamed, one tensor in memory at a time —
and written as ``safetensors``:
``DIR/<stage>/generator.safetensors`` (and ``reconstructor.safetensors``) for a generator stage —
the files :class:`vilgkit.Pipeline` loads — plus ``DIR/<stage>/<module>.safetensors`` with the
trainer's full keys. The other stage folders are copied without their checkpoints, and the
resolved recipe is written with ``strategy: SingleDevice`` so the result loads on one device.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import yaml

from vilgkit import sharded
from vilgkit.errors import VilgkitError
from vilgkit.recipe import load_run_recipe

HELP = "consolidate a sharded checkpoint into safetensors + the resolved recipe (single-device loadable)"
ACCEPTS_OVERRIDES = False
RESOLVED = "recipe.resolved.yaml"
SPLIT = (
    "generator",
    "reconstructor",
)  # GeneratorTrainable's children, saved as the Pipeline expects


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", help="run directory (holds recipe.resolved.yaml and stage folders)"
    )
    parser.add_argument(
        "--stage",
        default=None,
        help="stage whose checkpoint to export (default: the last one with one)",
    )
    parser.add_argument(
        "--out", required=True, help="output directory (must not exist or be empty)"
    )


def _step(path: Path) -> int:
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else -1


def find_checkpoints(stage_dir: Path) -> list[Path]:
    """Complete sharded checkpoints under ``stage_dir``, oldest first."""
    found = [
        p.parent
        for p in stage_dir.rglob(sharded.MARKER)
        if not p.parent.name.startswith(".tmp")
    ]
    return sorted(found, key=lambda p: (_step(p), p.stat().st_mtime))


def export(run: Path, out: Path, stage: str | None = None) -> Path:
    """Do the export; returns the stage folder inside ``out``."""
    run, out = Path(run), Path(out)
    recipe_path = run / RESOLVED
    if not recipe_path.is_file():
        raise VilgkitError(f"{run} is not a vilgkit run directory (no {RESOLVED})")
    if out.exists() and any(out.iterdir()):
        raise VilgkitError(f"{out} exists and is not empty")
    recipe = load_run_recipe(recipe_path)  # validated: only registered components
    if stage is None:
        names = [
            (s.get("init_args") or {}).get("name")
            or _snake(s["class_path"].rsplit(".", 1)[-1])
            for s in recipe.get("stages") or []
        ]
        with_ckpt = [
            n for n in names if (run / n).is_dir() and find_checkpoints(run / n)
        ]
        if not with_ckpt:
            raise VilgkitError(f"{run}: no stage has a complete sharded checkpoint")
        stage = with_ckpt[-1]
    ckpts = find_checkpoints(run / stage) if (run / stage).is_dir() else []
    if not ckpts:
        raise VilgkitError(
            f"{run / stage}: no complete sharded checkpoint (looked for {sharded.MARKER})"
        )
    source = ckpts[-1]
    marker = sharded.verify(source)
    out.mkdir(parents=True, exist_ok=True)
    for (
        child
    ) in run.iterdir():  # tokenizers, manifests, logs: everything but checkpoints
        if child.is_dir():
            shutil.copytree(
                child,
                out / child.name,
                ignore=shutil.ignore_patterns("checkpoints", ".tmp-*"),
            )
    stage_out = out / stage
    stage_out.mkdir(exist_ok=True)
    written = []
    for key in marker[
        "modules"
    ]:  # one tensor in memory at a time, whatever the model's size
        sharded.stream_module(source, key, stage_out / f"{key}.safetensors")
        written.append(f"{key}.safetensors")
        for prefix in SPLIT:
            if sharded.stream_module(
                source, key, stage_out / f"{prefix}.safetensors", prefix=prefix + "."
            ):
                written.append(f"{prefix}.safetensors")
    recipe["strategy"] = {
        "class_path": "vilgkit_parallel.single.SingleDevice",
        "init_args": {"device": "auto"},
    }
    resolved = {k: v for k, v in recipe.items()}
    (out / RESOLVED).write_text(
        yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    )
    record = {
        "source": str(source),
        "step": _step(source),
        "stage": stage,
        "files": written,
        "saved_world_size": marker.get("world_size"),
    }
    (stage_out / "export.json").write_text(json.dumps(record, indent=2))
    return stage_out


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def main(args: argparse.Namespace) -> int:
    try:
        stage_out = export(Path(args.run), Path(args.out), args.stage)
    except sharded.CheckpointIntegrityError as err:
        raise VilgkitError(str(err)) from None
    print(f"vilgkit: exported {stage_out}")
    return 0
