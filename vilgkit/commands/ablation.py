"""``vilgkit ablation FOLDER``: run an ablation recipe set (rows × training seeds) and write its table.

The folder holds ``base.yaml`` (shared components and stages), one ``row<N>_<what>.yaml`` per row
(merged on top of ``base.yaml`` exactly as ``vilgkit run base.yaml --config rowN.yaml`` would) and
an optional ``ablation.yaml`` (seeds, stages shared between seeds, row labels, claims; see
:mod:`vilgkit.ablation.config`). Each row × seed runs in ``RUN_DIR/row<N>/seed<k>/``; a stage that already
finished with the same settings, components, seed and upstream stages is reused, so the command
resumes where it stopped. Writes ``RUN_DIR/ablation.md`` and ``RUN_DIR/ablation.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vilgkit.commands._argtypes import flags
from vilgkit.errors import VilgkitError

HELP = "run an ablation recipe set (rows × training seeds, shared stages) and write its table"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder with base.yaml and row*.yaml (e.g. recipes/ablations/)")
    parser.add_argument("--run-dir", default=None, help="the ablation's root (default: base.yaml's run_dir)")
    parser.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: all)")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated training seeds (default: ablation.yaml's seeds, else [0])"
    )
    parser.add_argument("--fresh", action="store_true", help="rerun every stage even if it already finished")
    parser.add_argument(
        "--merge",
        action="append",
        default=None,
        metavar="ABLATION_JSON",
        help="an earlier ablation.json of this set (seeds run elsewhere): its rows × seeds join the table "
        "(repeatable; a pair run now replaces the merged one)",
    )
    parser.add_argument("--out", default=None, help="also copy the Markdown table here")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (on a shared, loaded CPU 1 thread is several times faster than 2)",
    )


def main(args: argparse.Namespace) -> int:
    from vilgkit.ablation import markdown_table, run_ablation

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise VilgkitError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    record = run_ablation(args.folder, **flags(args, "run_dir", "rows", "seeds", "fresh", "overrides", "merge"))
    table = markdown_table(record)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0
