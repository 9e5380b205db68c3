"""An ablation recipe set: ``base.yaml``, one ``row<N>_<what>.yaml`` per row, and the optional
``ablation.yaml`` that says how the set is run and read.

``ablation.yaml`` (every key optional)::

    title: Shared weights vs one model per direction
    seeds: [0, 1, 2]                  # training seeds; every row runs once per seed
    shared_stages: [fit_text_tokenizer, train_tokenizer]   # trained once, with shared_seed,
    shared_seed: 0                    #   and reused by every seed (default: the first of `seeds`)
    rows:                             # per row: its label, metrics not to report ("—")
      2: {label: text→image only, omit: [shapes_caption_all_correct]}
    claims:                           # verdicts: holds / does not hold / cannot be resolved
      - {claim: one model beats text→image only, better: 1, worse: 2, metrics: [shapes_prompt_accuracy]}
    loss_curve: {stage: train_generator, key: loss}   # optional: the training curve per row
    bootstrap: {resamples: 10000, confidence: 0.95}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vilgkit.ablation.stats import CONFIDENCE, RESAMPLES
from vilgkit.errors import VilgkitError

SETTINGS_FILE = "ablation.yaml"


@dataclass(frozen=True)
class MetricSpec:
    """How a reported metric reads: its column, its direction, its item count (proportions)."""

    key: str
    title: str
    lower_is_better: bool = False
    digits: int = 3
    count_key: str | None = None  # where the evaluation record keeps n (proportions only)


#: the metrics a table reports, in column order (a row shows those its evaluation stages wrote)
METRICS: dict[str, MetricSpec] = {
    m.key: m
    for m in (
        MetricSpec("fid", "FID ↓", lower_is_better=True, digits=2),
        MetricSpec("shapes_prompt_accuracy", "prompt accuracy ↑", count_key="shapes_num_images"),
        MetricSpec("psnr", "PSNR (dB) ↑", digits=2),
        MetricSpec("shapes_caption_all_correct", "caption accuracy ↑", count_key="num_samples"),
        MetricSpec("vqa_accuracy", "VQA accuracy ↑", count_key="vqa_count"),
        MetricSpec("final_loss", "final training loss ↓", lower_is_better=True),
    )
}


@dataclass(frozen=True)
class Claim:
    """A comparison the table gives a verdict on: row ``better`` beats row ``worse`` on ``metrics``."""

    text: str
    better: int
    worse: int
    metrics: tuple[str, ...]


@dataclass
class AblationSet:
    """A parsed recipe set (see the module docstring for ``ablation.yaml``)."""

    folder: Path
    rows: list[tuple[int, Path]]
    title: str = "Ablation"
    seeds: list[int] = field(default_factory=lambda: [0])
    shared_stages: list[str] = field(default_factory=list)
    shared_seed: int = 0
    labels: dict[int, str] = field(default_factory=dict)
    omit: dict[int, list[str]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    loss_curve: dict[str, str] | None = None
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE

    @property
    def base(self) -> Path:
        return self.folder / "base.yaml"

    def label(self, number: int, path: Path) -> str:
        """The row's label: from ``ablation.yaml``, else its file name after ``row<N>_``."""
        return self.labels.get(number) or path.stem.partition("_")[2].replace("_", " ") or path.stem


def _row_files(folder: Path) -> list[tuple[int, Path]]:
    rows = []
    for path in sorted(folder.glob("row*.yaml")):
        digits = path.stem[3:].split("_")[0]
        if not digits.isdigit():
            raise VilgkitError(f"{path}: row recipes are named row<N>_<description>.yaml")
        rows.append((int(digits), path))
    if not rows:
        raise VilgkitError(f"no row*.yaml recipes in {folder}")
    numbers = [n for n, _ in rows]
    if len(set(numbers)) != len(numbers):
        raise VilgkitError(f"{folder}: two row recipes share a number ({numbers})")
    return sorted(rows)


def parse_int_list(text: str, what: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (one-line error on anything else)."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VilgkitError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not out:
        raise VilgkitError(f"{what} is empty")
    return out


_KEYS = {"title", "seeds", "shared_stages", "shared_seed", "rows", "claims", "loss_curve", "bootstrap"}


def _settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise VilgkitError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VilgkitError(f"{path} must be a mapping")
    unknown = set(data) - _KEYS
    if unknown:
        raise VilgkitError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    return data


def load_set(folder: str | Path, *, rows: str | None = None, seeds: str | None = None) -> AblationSet:
    """Read a recipe set; ``rows`` / ``seeds`` (comma-separated) narrow or replace its own lists."""
    folder = Path(folder)
    if not (folder / "base.yaml").is_file():
        raise VilgkitError(f"{folder} has no base.yaml")
    all_rows = _row_files(folder)
    numbers = [n for n, _ in all_rows]
    s = _settings(folder / SETTINGS_FILE)
    where = folder / SETTINGS_FILE
    chosen = all_rows
    if rows:
        wanted = set(parse_int_list(rows, "--rows"))
        unknown = wanted - set(numbers)
        if unknown:
            raise VilgkitError(f"no row(s) {sorted(unknown)} in {folder}; it has {numbers}")
        chosen = [(n, p) for n, p in all_rows if n in wanted]
    own_seeds = [int(x) for x in s.get("seeds") or [0]]
    seed_list = parse_int_list(seeds, "--seeds") if seeds else own_seeds
    if len(set(seed_list)) != len(seed_list):
        raise VilgkitError(f"seeds must be distinct, got {seed_list}")
    row_cfg = s.get("rows") or {}
    for n, cfg in row_cfg.items():
        if int(n) not in numbers or not isinstance(cfg, dict) or set(cfg) - {"label", "omit"}:
            raise VilgkitError(f"{where}: rows.{n} must name a row of the set and hold only label / omit")
    claims = []
    for c in s.get("claims") or []:
        try:
            claim = Claim(str(c["claim"]), int(c["better"]), int(c["worse"]), tuple(c["metrics"]))
        except (KeyError, TypeError, ValueError):
            raise VilgkitError(f"{where}: each claim needs claim, better, worse (row numbers) and metrics") from None
        bad = [m for m in claim.metrics if m not in METRICS]
        if bad or {claim.better, claim.worse} - set(numbers):
            raise VilgkitError(f"{where}: claim {claim.text!r}: unknown metric(s) {bad} or row numbers")
        claims.append(claim)
    boot = s.get("bootstrap") or {}
    curve = s.get("loss_curve")
    if curve is not None and (not isinstance(curve, dict) or set(curve) != {"stage", "key"}):
        raise VilgkitError(f"{where}: loss_curve needs exactly stage and key")
    return AblationSet(
        folder=folder,
        rows=chosen,
        title=str(s.get("title") or f"Ablation: {folder.name}"),
        seeds=seed_list,
        shared_stages=list(s.get("shared_stages") or []),
        # the set's own first seed, also under --seeds: `--seeds 3,4` adds runs that reuse its tokenizer
        shared_seed=int(s.get("shared_seed", own_seeds[0])),
        labels={int(n): str(c["label"]) for n, c in row_cfg.items() if "label" in c},
        omit={int(n): list(c.get("omit") or []) for n, c in row_cfg.items()},
        claims=claims,
        loss_curve=curve,
        resamples=int(boot.get("resamples", RESAMPLES)),
        confidence=float(boot.get("confidence", CONFIDENCE)),
    )
