"""Shared pieces of the inference subcommands (``generate``, ``caption``, ``vqa``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_common(parser: argparse.ArgumentParser, default_out: str) -> None:
    """``RUN_DIR``, ``--stage``, ``--out``, ``--device``, ``--seed``."""
    parser.add_argument("run_dir", help="a finished run directory (holds recipe.resolved.yaml)")
    parser.add_argument("--stage", default=None, help="generator stage to load (default: the last one trained)")
    parser.add_argument("--out", default=None, help=f"output folder (default: RUN_DIR/{default_out})")
    parser.set_defaults(_default_out=default_out)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def load_pipeline(args: argparse.Namespace):
    from vilgkit.pipeline import Pipeline

    return Pipeline.from_run_dir(args.run_dir, stage=args.stage, device=args.device)


def out_dir(args: argparse.Namespace) -> Path:
    path = Path(args.out) if args.out else Path(args.run_dir) / args._default_out
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False))


def read_lines(path: str | None) -> list[str]:
    """Non-empty lines of a text file (``None`` → no lines)."""
    if path is None:
        return []
    file = Path(path)
    if not file.is_file():
        from vilgkit.errors import VilgkitError

        raise VilgkitError(f"file not found: {file}")
    return [line.rstrip("\n") for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
