"""How long an ablation recipe set takes here: a short timed run at reduced size, extrapolated.

    python benchmarks/ablation_estimate.py recipes/ablations/sparse_dense [--steps 40] [--samples 50]
        [--rows 1,2] [--threads 1] [--work /tmp/ablation_estimate]

Copies the set with its trainers cut in proportion (the longest to ``--steps`` steps;
``TrainShapesFeatures`` to at most ``--steps``) and every
evaluation to ``--samples`` items, runs it with ``vilgkit ablation`` at one seed, then estimates
each stage at full size from its measured wall time:

* a Trainer stage: ``fixed + full_steps × per_step``, ``per_step`` from the steady-state throughput
  the Trainer logged (``samples_per_s`` in ``metrics.jsonl``: the median of the last half of the
  logged values), ``fixed`` (tokenizing the data, building, saving) = the rest of the measured time;
* any other stage (feature extractor, evaluations): scaled by full / reduced steps or items.

Without ``--fresh`` stages an earlier call timed (same reduced copy) are reused with their recorded
times, so a set can be timed a few rows per call, each call short: ``--rows 1``, then ``--rows 1,3``.

The whole set is then the sum over its distinct stages, each counted once if the set shares it
between seeds (``shared_stages``) and once per seed otherwise. Stages that rows share (the same
fingerprint) are counted once, as the runner runs them once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

TRAINERS = ("TrainTokenizer", "TrainGenerator", "FinetuneVQA")
EVALS = {"Evaluate": "num_samples", "EvaluateReconstruction": "num_samples"}


def _short(node: dict) -> str:
    return node["class_path"].rpartition(".")[2]


def _row_number(path: Path) -> int:
    digits = path.stem[3:].split("_")[0]
    return int(digits) if path.stem.startswith("row") and digits.isdigit() else 0


def shrink(src: Path, dest: Path, steps: int, samples: int) -> dict[tuple[int, str], dict]:
    """Write the reduced copy; returns, per (row number or 0 for base.yaml, stage name), its full
    and reduced size. Trainer steps shrink in proportion (the longest to ``steps``), so rows that
    differ only in their step counts stay different stages."""
    from vilgkit.ablation.store import stage_name

    dest.mkdir(parents=True, exist_ok=True)
    recipes = {p: yaml.safe_load(p.read_text()) or {} for p in sorted(src.glob("*.yaml"))}
    longest = max(
        (n["init_args"]["trainer"]["steps"] for r in recipes.values() for n in r.get("stages") or []
         if _short(n) in TRAINERS),
        default=steps,
    )  # fmt: skip
    sizes: dict[tuple[int, str], dict] = {}
    for path, recipe in recipes.items():
        if path.name == "base.yaml":
            recipe["run_dir"] = str(dest / "run")
        for node in recipe.get("stages") or []:
            init = node.setdefault("init_args", {}) or {}
            node["init_args"] = init
            kind, key = _short(node), (_row_number(path), stage_name(node))
            if kind in TRAINERS:
                t = init["trainer"]
                reduced = max(2, round(t["steps"] * steps / longest))
                batch = t.get("batch_size", 32)
                sizes[key] = {"kind": "trainer", "full": t["steps"], "reduced": reduced, "batch": batch}
                init["trainer"] = {**t, "steps": reduced, "log_every": max(1, reduced // 8),
                                   "warmup_steps": min(t.get("warmup_steps", 0), reduced // 4)}  # fmt: skip
                init.pop("sample_every", None)
            elif kind == "TrainShapesFeatures":
                full = init.get("steps", 500)
                sizes[key] = {"kind": "scaled", "full": full, "reduced": min(steps, full)}
                init["steps"] = sizes[key]["reduced"]
            elif kind in EVALS:
                full = init.get("num_samples", 200)
                n = min(samples, full)
                sizes[key] = {"kind": "scaled", "full": full, "reduced": n}
                init["num_samples"] = n
                if "batch_size" in init:
                    init["batch_size"] = min(init["batch_size"], n)
        (dest / path.name).write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return sizes


def per_step(stage_dir: Path, batch: int) -> float | None:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rates = [json.loads(x).get("samples_per_s") for x in path.read_text().splitlines() if x.strip()]
    rates = [r for r in rates if isinstance(r, (int, float)) and r > 0]
    if not rates:
        return None
    return batch / statistics.median(rates[len(rates) // 2 :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--rows", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/ablation_estimate")
    parser.add_argument("--json", default=None, help="also write the estimate here")
    parser.add_argument(
        "--fresh", action="store_true", help="retime every stage (default: reuse what an earlier call timed)"
    )
    args = parser.parse_args(argv)

    import torch

    from vilgkit.ablation import load_set, run_ablation
    from vilgkit.ablation.runner import machine

    torch.set_num_threads(args.threads)
    src = Path(args.folder)
    aset = load_set(src)
    work = Path(args.work) / src.name
    sizes = shrink(src, work, args.steps, args.samples)
    record = run_ablation(work, rows=args.rows, seeds=str(aset.seeds[0]), fresh=args.fresh, log=print)
    root = work / "run"
    seeds = len(aset.seeds)
    stages, total = [], 0.0
    for s in record["stages"]:
        name, measured = s["stage"], s["seconds"]
        size = sizes.get((s["row"], name)) or sizes.get((0, name)) or {"kind": "fixed"}
        where = root / f"row{s['row']}" / f"seed{s['run_seed']}" / name
        step = per_step(where, size.get("batch", 0)) if size["kind"] == "trainer" else None
        if step is not None:
            fixed = max(0.0, measured - size["reduced"] * step)
            full = fixed + size["full"] * step
        elif size["kind"] in ("trainer", "scaled"):
            full = measured * size["full"] / size["reduced"]
        else:
            full = measured
        count = 1 if name in aset.shared_stages else seeds
        total += full * count
        stages.append({"stage": name, "row": s["row"], "measured_s": round(measured, 1), "reduced": size.get("reduced"),
                       "full": size.get("full"), "per_step_s": step and round(step, 4),
                       "estimate_s": round(full, 1), "times": count})  # fmt: skip
    out = {"set": str(src), "machine": machine(), "threads": args.threads, "seeds": aset.seeds,
           "rows_timed": args.rows or "all", "measured_wall_s": round(record["wall_seconds"], 1),
           "estimate_total_min": round(total / 60, 1), "stages": stages}  # fmt: skip
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
