"""``vilgkit ablation recipes/ablations/``: run the paper's Table 7 ablation and write its table.

The folder holds ``base.yaml`` (shared components and the shared stages: text tokenizer, dVAE,
Shapes FID feature extractor) and one recipe per row (``row*.yaml``), each merged on top of
``base.yaml`` exactly as ``vilgkit run base.yaml --config rowN.yaml`` would. All rows run in one
run directory; a stage is skipped when the same stage (same settings, same upstream stages) already
finished there, so the dVAE, the feature extractor and each generator train once for the table.

Writes ``RUN_DIR/ablation.md`` (the Markdown table, per-stage wall times, the machine load) and
``RUN_DIR/ablation.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

from vilgkit.errors import VilgkitError

HELP = "run the reconstruction ablation (paper Table 7) from a folder of row recipes and write the table"
ACCEPTS_OVERRIDES = True

MARKER = ".ablation_stage.json"
#: component keys a stage's fingerprint covers; ``reconstructor`` only for stages that use it
COMPONENT_KEYS = ("data", "text_tokenizer", "image_tokenizer", "generator", "strategy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder with base.yaml and row*.yaml (e.g. recipes/ablations/)")
    parser.add_argument(
        "--run-dir", default=None, help="run directory shared by all rows (default: base.yaml's run_dir)"
    )
    parser.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: all)")
    parser.add_argument("--fresh", action="store_true", help="rerun every stage even if it already finished")
    parser.add_argument("--out", default=None, help="also copy the Markdown table here")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (on a shared, loaded CPU 1 thread is several times faster than 2)",
    )


def _stage_name(node: dict[str, Any]) -> str:
    from vilgkit.interfaces.stage import _snake

    return (node.get("init_args") or {}).get("name") or _snake(node["class_path"].rpartition(".")[2])


def _uses_reconstructor(node: dict[str, Any]) -> bool:
    from vilgkit.stages.train_generator import _GeneratorStage

    module, _, attr = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    return issubclass(cls, _GeneratorStage) or "reconstructor" in getattr(cls.__init__, "__annotations__", {})


def stage_fingerprints(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """``(stage name, fingerprint)`` per stage: its settings, the components it reads, and the
    fingerprints of every stage before it in the row (so a retrained dVAE retrains what follows)."""
    out, previous = [], ""
    for node in recipe.get("stages") or []:
        keys = COMPONENT_KEYS + (("reconstructor",) if _uses_reconstructor(node) else ())
        payload = {
            "stage": node,
            "components": {k: recipe.get(k) for k in keys},
            "seed": recipe.get("seed"),
            "after": previous,
        }
        previous = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        out.append((_stage_name(node), previous))
    return out


def _rows(folder: Path, subset: str | None) -> list[tuple[int, Path]]:
    rows = []
    for path in sorted(folder.glob("row*.yaml")):
        digits = "".join(ch for ch in path.stem[3:].split("_")[0] if ch.isdigit())
        if not digits:
            raise VilgkitError(f"{path}: row recipes are named row<N>_<description>.yaml")
        rows.append((int(digits), path))
    if not rows:
        raise VilgkitError(f"no row*.yaml recipes in {folder}")
    if subset:
        wanted = {int(x) for x in subset.split(",") if x.strip()}
        unknown = wanted - {n for n, _ in rows}
        if unknown:
            raise VilgkitError(f"no row(s) {sorted(unknown)} in {folder}; it has {[n for n, _ in rows]}")
        rows = [(n, p) for n, p in rows if n in wanted]
    return rows


def run_ablation(
    folder: str | Path,
    *,
    run_dir: str | None = None,
    rows: str | None = None,
    fresh: bool = False,
    overrides: list[str] | None = None,
    log=print,
) -> dict[str, Any]:
    """Run every row (sharing finished stages) and return the table record (also written to disk)."""
    import torch

    from vilgkit.engine.runner import resolve, run

    folder = Path(folder)
    base = folder / "base.yaml"
    if not base.is_file():
        raise VilgkitError(f"{folder} has no base.yaml")
    overrides = list(overrides or [])
    command = " ".join(
        [
            "vilgkit ablation",
            str(folder),
            *(["--run-dir", str(run_dir)] if run_dir else []),
            *(["--rows", rows] if rows else []),
            *overrides,
        ]
    )
    if run_dir is not None:
        overrides += ["--run_dir", str(run_dir)]
    start, load_start = time.perf_counter(), os.getloadavg()
    stage_times: dict[str, dict[str, Any]] = {}
    results = []
    from vilgkit.artifacts import RunDir, write_json, write_text

    held: list[RunDir] = []
    try:
        for number, path in _rows(folder, rows):
            paths = [str(base), str(path)]
            recipe = resolve(paths, overrides)
            root = Path(recipe["run_dir"])
            if RunDir(root).lock("vilgkit ablation"):  # one writer for every row: the lock is held to the end
                held.append(RunDir(root))
            evaluated = None
            for name, fingerprint in stage_fingerprints(recipe):
                marker = root / name / MARKER
                done = json.loads(marker.read_text()) if marker.is_file() else None
                if done is not None and done.get("fingerprint") == fingerprint and not fresh:
                    stage_times.setdefault(name, {**done, "reused_by": []})["reused_by"].append(number)
                    log(f"ablation: row {number}: {name} already done ({done['seconds']:.0f} s), reused")
                else:
                    log(f"ablation: row {number}: running {name}")
                    t0, l0 = time.perf_counter(), os.getloadavg()[0]
                    run(paths, overrides, stages=[name])
                    record = {
                        "fingerprint": fingerprint,
                        "seconds": time.perf_counter() - t0,
                        "row": number,
                        "load_before": l0,
                        "load_after": os.getloadavg()[0],
                    }
                    write_json(marker, record)
                    stage_times[name] = {**record, "reused_by": []}
                metrics_file = root / name / "metrics.json"
                if metrics_file.is_file():
                    evaluated = name
            if evaluated is None:
                raise VilgkitError(f"{path}: no EvaluateReconstruction stage wrote metrics.json")
            result = json.loads((root / evaluated / "metrics.json").read_text())
            results.append({"row": number, "recipe": str(path), **result})
        record = {
            "command": command,
            "rows": results,
            "stages": stage_times,
            "wall_seconds": time.perf_counter() - start,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "orderings": paper_orderings(results),
        }
        root.mkdir(parents=True, exist_ok=True)
        write_json(root / "ablation.json", record)
        write_text(root / "ablation.md", markdown_table(record))
    finally:
        for lock in held:
            lock.unlock()
    return record


def _find(results: list[dict[str, Any]], generator: str, reconstructor: str) -> dict[str, Any] | None:
    return next((r for r in results if r["generator"] == generator and r["reconstructor"] == reconstructor), None)


def paper_orderings(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's three claims (end-to-end is better), checked on FID and prompt accuracy."""
    claims = [
        (
            "end-to-end G beats two-stage G (both decoded by two-stage R)",
            ("Two-stage G", "Two-stage R"),
            ("End-to-end G", "Two-stage R"),
        ),
        (
            "end-to-end R beats two-stage R (end-to-end G)",
            ("End-to-end G", "Two-stage R"),
            ("End-to-end G", "End-to-end R"),
        ),
        (
            "end-to-end R beats two-stage R on gold sequences",
            ("Gold image sequence", "Two-stage R"),
            ("Gold image sequence", "End-to-end R"),
        ),
    ]
    out = []
    for text, worse, better in claims:
        a, b = _find(results, *worse), _find(results, *better)
        if a is None or b is None:
            continue
        ma, mb = a["metrics"], b["metrics"]
        out.append(
            {
                "claim": text,
                "fid": [ma["fid"], mb["fid"]],
                "holds_fid": mb["fid"] < ma["fid"],
                "prompt_accuracy": [ma["shapes_prompt_accuracy"], mb["shapes_prompt_accuracy"]],
                "holds_prompt_accuracy": mb["shapes_prompt_accuracy"] > ma["shapes_prompt_accuracy"],
            }
        )
    return out


def markdown_table(record: dict[str, Any]) -> str:
    """The table (paper Table 7 layout plus prompt accuracy and PSNR), timings and load."""
    lines = [
        "| row | Generator | Reconstructor | FID ↓ | prompt accuracy ↑ | object recall ↑ | PSNR (dB) ↑ |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]

    def cell(m: dict[str, Any], key: str, fmt: str) -> str:
        runs = m.get(f"{key}_runs")
        spread = f" ({', '.join(format(v, fmt) for v in runs)})" if runs else ""
        return format(m[key], fmt) + spread

    for r in record["rows"]:
        m = r["metrics"]
        psnr = f"{m['psnr']:.2f}" if "psnr" in m else "—"
        lines.append(
            f"| {r['row']} | {r['generator']} | {r['reconstructor']} | {cell(m, 'fid', '.2f')} | "
            f"{cell(m, 'shapes_prompt_accuracy', '.3f')} | {cell(m, 'shapes_object_recall', '.3f')} | {psnr} |"
        )
    n = record["rows"][0]["settings"]["num_samples"] if record["rows"] else 0
    floors = [r["metrics"]["fid_real_vs_real"] for r in record["rows"] if "fid_real_vs_real" in r["metrics"]]
    lines += [
        "",
        f"{n} held-out Shapes images per row; FID with the Shapes feature extractor (no downloaded weights); "
        "rows sampled several times show the mean and each run in parentheses.",
    ]
    if floors:
        lines.append(
            f"FID between the evaluation images and {n} independent real images (the noise floor): {floors[0]:.2f}."
        )
    lines.append("")
    if record["orderings"]:
        lines += [
            "| paper's claim | FID (two-stage → end-to-end) | holds? | prompt accuracy | holds? |",
            "|---|---|---|---|---|",
        ]
        for o in record["orderings"]:
            lines.append(
                f"| {o['claim']} | {o['fid'][0]:.2f} → {o['fid'][1]:.2f} | {'yes' if o['holds_fid'] else 'no'} | "
                f"{o['prompt_accuracy'][0]:.3f} → {o['prompt_accuracy'][1]:.3f} | "
                f"{'yes' if o['holds_prompt_accuracy'] else 'no'} |"
            )
        lines.append("")
    lines += [
        "| stage | wall time (s) | run by row | reused by rows | load avg before → after |",
        "|---|---:|---:|---|---|",
    ]
    for name, s in record["stages"].items():
        reused = ", ".join(map(str, s.get("reused_by", []))) or "—"
        lines.append(
            f"| {name} | {s['seconds']:.0f} | {s['row']} | {reused} | "
            f"{s.get('load_before', float('nan')):.1f} → {s.get('load_after', float('nan')):.1f} |"
        )
    ls, le = record["load_average_start"], record["load_average_end"]
    from_scratch = sum(s["seconds"] for s in record["stages"].values())
    lines += [
        "",
        f"Sum of the stage wall times (the table from scratch): {from_scratch / 60:.1f} min.",
        f"This invocation's wall time {record['wall_seconds'] / 60:.1f} min on {record['cpu_count']} CPU cores "
        f"({record['torch_threads']} torch threads); load average (1/5/15 min) at start "
        f"{ls[0]:.1f}/{ls[1]:.1f}/{ls[2]:.1f}, at end {le[0]:.1f}/{le[1]:.1f}/{le[2]:.1f}.",
        "",
        f"Command: `{record['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise VilgkitError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    record = run_ablation(args.folder, run_dir=args.run_dir, rows=args.rows, fresh=args.fresh, overrides=args.overrides)
    table = markdown_table(record)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0
