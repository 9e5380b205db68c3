"""Ablation recipe sets run by ``vilgkit ablation``: rows × training seeds, shared stages, per-row
mean ± standard deviation and bootstrap intervals, and verdicts that do not rank what the
intervals cannot separate (docs/ablations.md)."""

from vilgkit.ablation.config import METRICS, AblationSet, Claim, MetricSpec, load_set  # noqa: F401
from vilgkit.ablation.runner import run_ablation  # noqa: F401
from vilgkit.ablation.stats import Summary, bootstrap_means, overlap, summarise, verdict  # noqa: F401
from vilgkit.ablation.store import MARKER, StageStore, stage_fingerprints  # noqa: F401
from vilgkit.ablation.table import markdown_table  # noqa: F401
