"""Run an ablation recipe set: every row for every training seed, stages shared where they can be,
then the table (``ablation.md``) and its record (``ablation.json``) in the ablation's root.

The root holds one run directory per row and seed (``row<N>/seed<k>/``). Finished stages are reused (see
:mod:`vilgkit.ablation.store`), so running the command again after an interruption continues where
it stopped, and adding a seed or a row runs only what is new. The table is rewritten after every
row × seed, so a long run shows its progress.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from vilgkit import artifacts
from vilgkit.ablation.config import METRICS, AblationSet, load_set
from vilgkit.ablation.merge import read_records
from vilgkit.ablation.results import read_row
from vilgkit.ablation.stats import summarise
from vilgkit.ablation.store import StageStore, check_shared_order, stage_fingerprints, stage_name
from vilgkit.ablation.table import markdown_table
from vilgkit.errors import VilgkitError

RECORD_FILE = "ablation.json"
TABLE_FILE = "ablation.md"


def machine() -> str:
    """The CPU model (``lscpu``'s "Model name") and the GPU, if one is visible."""
    import torch

    from vilgkit.dispatch import cpu_model

    text = f"{cpu_model()}, {os.cpu_count()} CPU cores"

    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        flag = item.split("=", 1)[0]
        if flag in ("--seed", "--run_dir"):
            raise VilgkitError(f"{flag} is set by `vilgkit ablation` per seed: use --seeds 0,1,2 / --run-dir instead")


def summarise_rows(aset: AblationSet, measured: dict[tuple[int, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row: label, the seeds measured so far and, per metric, its :class:`Summary` as a dict."""
    rows = []
    for number, path in aset.rows:
        seeds = [s for s in aset.seeds if (number, s) in measured]
        if not seeds:
            continue
        per_seed = [measured[(number, s)] for s in seeds]
        summaries = {}
        for key in METRICS:
            if key in aset.omit.get(number, []) or any(key not in m["metrics"] for m in per_seed):
                continue
            values = [m["metrics"][key][0] for m in per_seed]
            counts = [m["metrics"][key][1] for m in per_seed]
            s = summarise(
                values,
                counts if all(counts) else None,
                resamples=aset.resamples,
                confidence=aset.confidence,
                seed=number,
            )
            summaries[key] = s.to_dict()
        rows.append(
            {
                "row": number,
                "recipe": str(path),
                "label": aset.label(number, path),
                "labels": per_seed[0]["labels"],
                "seeds": seeds,
                "metrics": summaries,
                "per_seed": {str(s): m for s, m in zip(seeds, per_seed)},
            }
        )
    return rows


def run_ablation(
    folder: str | Path,
    *,
    run_dir: str | None = None,
    rows: str | None = None,
    seeds: str | None = None,
    fresh: bool = False,
    overrides: list[str] | None = None,
    merge: list[str] | None = None,
    log=print,
) -> dict[str, Any]:
    """Run every row × seed of a recipe set (sharing finished stages); returns the table record,
    also written to ``ablation.json`` / ``ablation.md`` in the root (``--run-dir`` or base's ``run_dir``).

    ``merge``: earlier ``ablation.json`` records of the same set (:mod:`vilgkit.ablation.merge`);
    the table then holds every row × seed they measured as well as those run now."""
    import torch

    from vilgkit.engine.runner import resolve

    aset = load_set(folder, rows=rows, seeds=seeds)
    overrides = list(overrides or [])
    _check_overrides(overrides)
    command = " ".join(
        [
            "vilgkit ablation",
            str(aset.folder),
            *(["--run-dir", str(run_dir)] if run_dir else []),
            *(["--rows", rows] if rows else []),
            *(["--seeds", seeds] if seeds else []),
            *[arg for path in merge or [] for arg in ("--merge", str(path))],
            *overrides,
        ]
    )
    merged, sources, table_set = {}, [], aset
    if merge:  # the table spans every row and seed measured, here or in a merged record
        every_row = load_set(folder, seeds=seeds).rows
        merged, sources = read_records(list(merge), every_row)
        seen = sorted({s for _, s in merged} | set(aset.seeds))
        table_set = dataclasses.replace(aset, rows=every_row, seeds=seen)
    recipes = {n: resolve([str(aset.base), str(p)], overrides) for n, p in aset.rows}
    root = Path(run_dir or next(iter(recipes.values()))["run_dir"])
    all_names = {stage_name(node) for r in recipes.values() for node in r.get("stages") or []}
    if unknown := [s for s in aset.shared_stages if s not in all_names]:
        raise VilgkitError(f"{aset.folder}: shared_stages {unknown} are stages of no row")
    for n, p in aset.rows:
        check_shared_order(recipes[n], aset.shared_stages, str(p))
    store = StageStore(root, fresh=fresh, log=log)
    start, load_start = time.perf_counter(), os.getloadavg()
    measured: dict[tuple[int, int], dict[str, Any]] = dict(merged)
    root.mkdir(parents=True, exist_ok=True)
    held = [artifacts.RunDir(root)] if artifacts.RunDir(root).lock("vilgkit ablation") else []
    record: dict[str, Any] = {}
    try:
        for seed in aset.seeds:  # seed-major: a whole table at one seed comes first
            for number, path in aset.rows:
                here = store.pair_dir(number, seed)
                here.mkdir(parents=True, exist_ok=True)
                if artifacts.RunDir(here).lock("vilgkit ablation"):  # one writer: held to the end
                    held.append(artifacts.RunDir(here))
                paths = [str(aset.base), str(path)]
                recipe = resolve(paths, [*overrides, "--seed", str(seed)])

                def seed_of(name: str, seed: int = seed) -> int:
                    return aset.shared_seed if name in aset.shared_stages else seed

                for name, fingerprint, stage_seed in stage_fingerprints(recipe, seed_of):
                    store.ensure(paths, overrides, name, fingerprint, stage_seed, (number, seed))
                measured[(number, seed)] = read_row(recipe, here, str(path), aset.loss_curve)
                record = _record(
                    table_set, measured, store, command, start, load_start, torch.get_num_threads(), sources
                )
                artifacts.write_json(root / RECORD_FILE, record)
                artifacts.write_text(root / TABLE_FILE, markdown_table(record))
    finally:
        for lock in held:
            lock.unlock()
    return record


def _record(aset, measured, store, command, start, load_start, threads, sources) -> dict[str, Any]:
    here = list(store.records.values())
    # a merged record's stage that this invocation also holds (a shared tokenizer) is listed once
    known = {s["fingerprint"] for s in here}
    earlier = [s for src in sources for s in src["stages"] if s.get("fingerprint") not in known]
    return {
        "title": aset.title,
        "command": command,
        "machine": machine(),
        "seeds": aset.seeds,
        "shared_stages": aset.shared_stages,
        "shared_seed": aset.shared_seed,
        "bootstrap": {"resamples": aset.resamples, "confidence": aset.confidence},
        "rows": summarise_rows(aset, measured),
        "claims": [
            {"claim": c.text, "better": c.better, "worse": c.worse, "metrics": list(c.metrics)} for c in aset.claims
        ],
        "stages": earlier + here,
        "merged": [{k: v for k, v in src.items() if k != "stages"} for src in sources],
        "wall_seconds": time.perf_counter() - start,
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
    }
