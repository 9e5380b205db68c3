"""``vilgkit export RUN [--stage S] --out DIR``: a sharded checkpoint → a single-device run directory.

The newest complete sharded (DCP) checkpoint of the stage is verified (hashes in our marker),
consolidated on one process without building the model — streamed, one tensor in memory at a time —
and written as ``safetensors``:
``DIR/<stage>/generator.safetensors`` (and ``reconstructor.safetensors``) for a generator stage —
the files :class:`vilgkit.Pipeline` loads — plus ``DIR/<stage>/<module>.safetensors`` with the
trainer's full keys. The other stage folders are copied without their checkpoints (each file
verified against the run's manifest first), the resolved recipe is written with ``strategy:
SingleDevice`` so the result loads on one device, and ``DIR/artifacts.json`` hashes every file of
the export (the consolidated weights included), so loading the export verifies it too.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from vilgkit import sharded
from vilgkit.artifacts import (
    CHECKPOINTS_DIR,
    EXPORT_RECORD,
    LOCK,
    MANIFEST,
    RESOLVED_RECIPE,
    RunDir,
    read_recipe,
    stage_names,
)
from vilgkit.errors import VilgkitError

HELP = "consolidate a sharded checkpoint into safetensors + the resolved recipe (single-device loadable)"
SPLIT = ("generator", "reconstructor")  # GeneratorTrainable's children, saved as the Pipeline expects


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (holds recipe.resolved.yaml and stage folders)")
    parser.add_argument(
        "--stage", default=None, help="stage whose checkpoint to export (default: the last one with one)"
    )
    parser.add_argument("--out", required=True, help="output directory (must not exist or be empty)")


def _step(path: Path) -> int:
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else -1


def find_checkpoints(stage_dir: Path) -> list[Path]:
    """Complete sharded checkpoints under ``stage_dir``, oldest first."""
    found = [p.parent for p in stage_dir.rglob(sharded.MARKER) if not p.parent.name.startswith(".tmp")]
    return sorted(found, key=lambda p: (_step(p), p.stat().st_mtime))


def export(run: Path, out: Path, stage: str | None = None) -> Path:
    """Do the export; returns the stage folder inside ``out``.

    Every file taken from ``run`` is verified against its manifest first; ``out`` gets its own
    manifest (the copied files, the consolidated weights, the recipe) and is written under its lock.
    """
    source, target = RunDir(run), RunDir(out)
    recipe = read_recipe(source, anchored=False, versions=True)
    if target.path.exists() and not target.path.is_dir():
        raise VilgkitError(f"--out {target.path} is a file, not a directory")
    if target.path.exists() and any(p.name != LOCK for p in target.path.iterdir()):
        raise VilgkitError(f"{target.path} exists and is not empty")
    if stage is None:
        with_ckpt = [n for n in stage_names(recipe) if (source.path / n).is_dir() and find_checkpoints(source.path / n)]
        if not with_ckpt:
            raise VilgkitError(f"{source.path}: no stage has a complete sharded checkpoint")
        stage = with_ckpt[-1]
    ckpts = find_checkpoints(source.path / stage) if (source.path / stage).is_dir() else []
    if not ckpts:
        raise VilgkitError(f"{source.path / stage}: no complete sharded checkpoint (looked for {sharded.MARKER})")
    checkpoint = ckpts[-1]
    marker = sharded.verify(checkpoint)
    # tokenizers, manifests, logs, external files: every folder but the checkpoints, verified before
    # anything is written
    folders = [child for child in sorted(source.path.iterdir()) if child.is_dir() and not child.name.startswith(".")]
    for child in folders:
        source.verify_tree(child)
    # top-level files the run wrote besides its recipe and manifest (e.g. the evaluated inference settings)
    top_files = [
        f
        for f in sorted(source.path.iterdir())
        if f.is_file() and not f.name.startswith(".") and f.name not in (RESOLVED_RECIPE, MANIFEST)
    ]
    source.verify(*top_files)
    with target.locked("vilgkit export"):
        for child in folders:
            shutil.copytree(child, target.path / child.name, ignore=shutil.ignore_patterns(CHECKPOINTS_DIR, ".*"))
        for file in top_files:
            shutil.copy2(file, target.path / file.name)
        target.record_tree()
        external = source.manifest().get("external", {}) if source.manifest_path.is_file() else {}
        if external:
            manifest = target.manifest()
            manifest["external"] = external
            target._write_manifest(manifest)
        stage_out = target.stage(stage)
        stage_out.mkdir(exist_ok=True)
        written = []
        for key in marker["modules"]:  # one tensor in memory at a time, whatever the model's size
            path = stage_out / f"{key}.safetensors"
            sharded.stream_module(checkpoint, key, path)
            target.record(path)
            written.append(path.name)
            for prefix in SPLIT:
                part = stage_out / f"{prefix}.safetensors"
                if sharded.stream_module(checkpoint, key, part, prefix=prefix + "."):
                    target.record(part)
                    written.append(part.name)
        versions = recipe.pop("_versions", None)
        recipe["strategy"] = {"class_path": "vilgkit_parallel.single.SingleDevice", "init_args": {"device": "auto"}}
        target.write_recipe(recipe, versions)
        record = {
            "source": str(checkpoint),
            "step": _step(checkpoint),
            "stage": stage,
            "files": written,
            "saved_world_size": marker.get("world_size"),
        }
        target.write_json(stage_out / EXPORT_RECORD, record)
    return stage_out


def main(args: argparse.Namespace) -> int:
    try:
        stage_out = export(Path(args.run), Path(args.out), args.stage)
    except sharded.CheckpointIntegrityError as err:
        raise VilgkitError(str(err)) from None
    print(f"vilgkit: exported {stage_out}")
    return 0
