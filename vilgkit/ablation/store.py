"""Stages of an ablation, run once and reused across rows and seeds.

Every row × training seed has its own run directory (``ROOT/row<N>/seed<k>``), as
``vilgkit run base.yaml --config rowN.yaml --seed k`` would make it, so rows may reuse stage names
(``train_generator``, ``evaluate``) and a row file may change only a component. A stage is
identified by a fingerprint of its resolved recipe node, the components it reads, the seed it runs
with and the fingerprints of the stages before it.
Before running a stage in a seed's directory the store looks for that fingerprint:

* in the same directory (``<stage>/.ablation_stage.json``): finished already, reused in place;
* in another row's or seed's directory: the same stage (a tokenizer every row trains alike; a stage
  the set shares between seeds, ``shared_stages``, run with ``shared_seed``), copied over
  (checkpoints left behind) and hashed into that run's manifest;
* nowhere: run it (``vilgkit run`` of the row's recipe with ``--stages <name>``).

A stage folder without a marker was interrupted: it is resumed from its checkpoints. One whose
marker holds another fingerprint (the recipe changed) is deleted and run again, as with ``--fresh``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vilgkit import artifacts
from vilgkit.errors import VilgkitError

MARKER = ".ablation_stage.json"
#: component keys a stage's fingerprint covers; ``reconstructor`` only for stages that use it
COMPONENT_KEYS = ("data", "text_tokenizer", "image_tokenizer", "generator", "strategy")
#: the components the built-in stages that train no generator read (from their ``run``), so that
#: rows that differ only in the generator or the reconstructor share their tokenizers; any other
#: stage class is fingerprinted with every component (safe: at worst it runs once more)
STAGE_READS = {
    "FitTextTokenizer": ("data", "text_tokenizer"),
    "TrainTokenizer": ("data", "image_tokenizer", "strategy"),
    "TrainShapesFeatures": (),
}


def stage_name(node: dict[str, Any]) -> str:
    from vilgkit.interfaces.stage import stage_name as name

    return name(node)


def _reads(node: dict[str, Any]) -> tuple[str, ...]:
    """The component keys a stage's output depends on."""
    from vilgkit.stages.train_generator import _GeneratorStage

    module, _, attr = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    if cls.__module__.startswith("vilgkit.") and attr in STAGE_READS:
        return STAGE_READS[attr]
    uses = issubclass(cls, _GeneratorStage) or "reconstructor" in getattr(cls.__init__, "__annotations__", {})
    return COMPONENT_KEYS + (("reconstructor",) if uses else ())


def stage_fingerprints(
    recipe: dict[str, Any], seed_of: Callable[[str], int] | None = None
) -> list[tuple[str, str, int]]:
    """``(stage name, fingerprint, seed)`` per stage of a resolved recipe.

    Args:
        recipe: the row's resolved recipe.
        seed_of: the seed a stage runs with (default: the recipe's ``seed`` for every stage).
    """
    out, previous = [], ""
    for node in recipe.get("stages") or []:
        name = stage_name(node)
        seed = int(recipe.get("seed", 0)) if seed_of is None else seed_of(name)
        components = {k: recipe.get(k) for k in _reads(node)}
        payload = {"stage": node, "components": components, "seed": seed, "after": previous}
        previous = hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        out.append((name, previous, seed))
    return out


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    marker = stage_dir / MARKER
    try:
        return json.loads(marker.read_text()) if marker.is_file() else None
    except ValueError:
        return None  # a marker cut short: the stage counts as unfinished


def _copy_stage(source: Path, dest: Path) -> None:
    """Copy a finished stage folder into another run (no checkpoints: nothing resumes a copy)."""
    owner = artifacts.RunDir.owning(source)
    if owner is not None:
        owner.verify_tree(source)  # a damaged source is not spread further
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(artifacts.CHECKPOINTS_DIR, MARKER))
    artifacts.RunDir(dest.parent).record_tree(dest)


class StageStore:
    """Runs or reuses the stages of ``(row, seed)`` pairs under one ablation root.

    Attributes:
        records: per fingerprint, what happened: name, seed, wall time, the pair that ran it, the
            pairs that reused it (and whether as a copy).
    """

    def __init__(self, root: Path, *, fresh: bool = False, log=print) -> None:
        self.root, self.fresh, self.log = Path(root), fresh, log
        self.records: dict[str, dict[str, Any]] = {}
        self._freshened: set[Path] = set()

    def pair_dir(self, row: int, seed: int) -> Path:
        """The run directory of row ``row`` at training seed ``seed``."""
        return self.root / f"row{row}" / f"seed{seed}"

    def _elsewhere(self, name: str, fingerprint: str, here: Path) -> Path | None:
        """A finished copy of the stage in another row's or seed's directory (under ``--fresh``
        only one this invocation made: an older one is what ``--fresh`` asks not to reuse)."""
        for other in sorted(self.root.glob("row*/seed*")):
            if other == here or (self.fresh and other / name not in self._freshened):
                continue
            if (done := read_marker(other / name)) and done.get("fingerprint") == fingerprint:
                return other / name
        return None

    def ensure(
        self, paths: list[str], overrides: list[str], name: str, fingerprint: str, seed: int, pair: tuple[int, int]
    ) -> None:
        """Make stage ``name`` of row recipe ``paths`` finished in the run directory of ``pair``
        (row, training seed), running it with ``seed``."""
        from vilgkit.engine.runner import run

        here = self.pair_dir(*pair)
        stage_dir = here / name
        tag = f"row {pair[0]} seed {pair[1]}"
        done = read_marker(stage_dir)
        if self.fresh and stage_dir not in self._freshened:  # --fresh: each stage folder runs again once
            self._freshened.add(stage_dir)
            done = None
            if stage_dir.exists():
                shutil.rmtree(stage_dir)
        if done is not None and done.get("fingerprint") == fingerprint:
            self._reused(fingerprint, done, name, pair, "in place")
            self.log(f"ablation: {tag}: {name} already done ({done['seconds']:.0f} s), reused")
            return
        if done is not None:  # finished with other settings: stale
            self.log(f"ablation: {tag}: {name} was run with other settings; running it again")
            shutil.rmtree(stage_dir)
        source = self._elsewhere(name, fingerprint, here)
        if source is not None:
            done = read_marker(source)
            _copy_stage(source, stage_dir)
            # byte for byte: later stages fingerprint their tokenizer folders by content (the
            # tokenized-data cache), so a copy must not differ from what it copies
            shutil.copyfile(source / MARKER, stage_dir / MARKER)
            self._reused(fingerprint, done, name, pair, "copied")
            self.log(f"ablation: {tag}: {name} copied from {source.parent.relative_to(self.root)} (same stage)")
            return
        resume = stage_dir.is_dir()  # a folder without a marker: interrupted, continue its checkpoints
        if not resume:
            self._prime_cache(name, stage_dir)
        self.log(f"ablation: {tag}: running {name}" + (" (resuming)" if resume else ""))
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        run(paths, [*overrides, "--seed", str(seed), "--run_dir", str(here)], stages=[name], resume=resume)
        record = {
            "fingerprint": fingerprint,
            "stage": name,
            "seed": seed,
            "seconds": time.perf_counter() - t0,
            "row": pair[0],
            "run_seed": pair[1],
            "load_before": load0,
            "load_after": os.getloadavg()[0],
        }
        artifacts.write_json_atomic(stage_dir / MARKER, record)
        self.records[fingerprint] = {**record, "ran": True, "reused_by": []}

    def _prime_cache(self, name: str, stage_dir: Path) -> None:
        """Offer the stage the tokenized data of the same-named stage of another row or seed.

        The generator stages cache their tokenized data set in their folder under a fingerprint of
        the data and the tokenizers' files, and tokenize again when it does not match; another seed
        of the same stage reads the same data with the same (copied) tokenizers, so its cache is
        normally valid and saves tokenizing the whole data set again.
        """
        for other in sorted(self.root.glob(f"row*/seed*/{name}/{artifacts.TOKENIZED_CACHE}")):
            if read_marker(other.parent) is not None:  # from a finished stage only
                stage_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(other, stage_dir / artifacts.TOKENIZED_CACHE)
                artifacts.RunDir(stage_dir.parent).record(stage_dir / artifacts.TOKENIZED_CACHE)
                return

    def _reused(self, fingerprint: str, done: dict[str, Any], name: str, pair: tuple[int, int], how: str) -> None:
        entry = self.records.setdefault(
            fingerprint,
            {
                **done,
                "stage": name,
                "seed": done.get("seed"),
                "run_seed": done.get("run_seed", pair[1]),
                "ran": False,
                "reused_by": [],
            },
        )
        entry["reused_by"].append({"row": pair[0], "seed": pair[1], "how": how})

    def runs_of(self, name: str) -> int:
        """How many times this invocation trained stage ``name`` (reuse and copies not counted)."""
        return sum(1 for r in self.records.values() if r["stage"] == name and r["ran"])


def check_shared_order(recipe: dict[str, Any], shared: list[str], where: str) -> None:
    """A shared stage must not follow a per-seed one (it would depend on the training seed)."""
    names = [stage_name(n) for n in recipe.get("stages") or []]
    seen_per_seed = None
    for n in names:
        if n in shared and seen_per_seed is not None:
            raise VilgkitError(
                f"{where}: shared stage {n!r} comes after the per-seed stage {seen_per_seed!r}; it would "
                "depend on the training seed"
            )
        if n not in shared:
            seen_per_seed = seen_per_seed or n
