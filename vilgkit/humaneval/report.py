"""``vilgkit humaneval report``: the paper's tables from a campaign's ratings, with agreement and CIs.

Per system (run A, run B, the human answers of a VQA campaign) and criterion: the mean score — the
mean over items of each item's mean rating, which is the mean of all ratings when every item has
the same number of raters — with a percentile bootstrap confidence interval that resamples items
(ratings of one item are not independent). A VQA campaign's Turing-test criterion is reported as the
passing rate (the share of answers judged human). Agreement between raters: Krippendorff's alpha per
criterion (ordinal and interval; nominal for the two-valued Turing test). With two runs, the
difference B − A per criterion with a paired bootstrap interval over the shared inputs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vilgkit.humaneval.agreement import krippendorff_alpha
from vilgkit.humaneval.store import Campaign

REPORT_MD, REPORT_JSON = "report.md", "report.json"


def _bootstrap(values: np.ndarray, rng: np.random.Generator, rounds: int, confidence: float) -> list[float] | None:
    if len(values) < 2 or rounds < 1:
        return None
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def _stat(values: list[float], rng, rounds: int, confidence: float, scale: float = 1.0) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    ci = _bootstrap(arr, rng, rounds, confidence)
    return {
        "mean": float(arr.mean()) * scale if len(arr) else None,
        "ci": [c * scale for c in ci] if ci else None,
        "items": len(arr),
    }


def campaign_report(
    campaign: Campaign, *, rounds: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """The report as a dict (what ``report.json`` holds)."""
    protocol, ratings = campaign.protocol, campaign.ratings()
    rng = np.random.default_rng(seed)
    keys = [c.key for c in protocol.criteria]
    # per (system, criterion): item → its ratings
    by_item: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    item_input: dict[int, int] = {}
    for r in ratings:
        by_item[(r["system"], r["criterion"])][r["item"]].append(r["score"])
        item_input[r["item"]] = r["input"]
    systems = list(campaign.meta["systems"])
    results: dict[str, Any] = {}
    for system in systems:
        row: dict[str, Any] = {}
        for key in keys:
            items = by_item.get((system, key), {})
            means = [float(np.mean(v)) for v in items.values()]
            scale = 100.0 if key == "turing" else 1.0  # the Turing test is a passing rate in %
            row["turing_pass_rate" if key == "turing" else key] = _stat(means, rng, rounds, confidence, scale)
        if protocol.name != "vqa":  # Tables 2 and 5 also average the criteria
            per_item: dict[int, list[float]] = defaultdict(list)
            for key in keys:
                for item, values in by_item.get((system, key), {}).items():
                    per_item[item].append(float(np.mean(values)))
            row["average"] = _stat(
                [float(np.mean(v)) for v in per_item.values() if len(v) == len(keys)],
                rng,
                rounds,
                confidence,
            )
        results[system] = row
    agreement = {}
    for key in keys:
        units = [v for (_, k), items in by_item.items() if k == key for v in items.values()]
        levels = ("nominal",) if key == "turing" else ("ordinal", "interval")
        agreement[key] = {level: krippendorff_alpha(units, level) for level in levels}
        agreement[key]["items_with_2_or_more_ratings"] = sum(1 for u in units if len(u) >= 2)
    comparison = None
    runs = [s for s in systems if s in ("A", "B")]
    if runs == ["A", "B"]:
        comparison = {}
        for key in keys:
            per_input: dict[int, dict[str, float]] = defaultdict(dict)
            for system in runs:
                for item, values in by_item.get((system, key), {}).items():
                    per_input[item_input[item]][system] = float(np.mean(values))
            diffs = [v["B"] - v["A"] for v in per_input.values() if len(v) == 2]
            scale = 100.0 if key == "turing" else 1.0
            comparison[key] = _stat(diffs, rng, rounds, confidence, scale)
    counts = campaign.counts()
    return {
        "campaign": str(campaign.path),
        "protocol": protocol.name,
        "table": protocol.table,
        "systems": campaign.meta["systems"],
        "raters": len({r["rater"] for r in ratings}),
        "items": counts["items"],
        "ratings_given": counts["given"],
        "ratings_needed": counts["needed"],
        "confidence": confidence,
        "bootstrap_rounds": rounds,
        "results": results,
        "agreement": agreement,
        "comparison_b_minus_a": comparison,
    }


def _fmt(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if not stat or stat["mean"] is None:
        return "—"
    ci = f" [{stat['ci'][0]:.{digits}f}, {stat['ci'][1]:.{digits}f}]" if stat["ci"] else ""
    return f"{stat['mean']:.{digits}f}{ci}"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the paper's table, agreement, and the A/B difference."""
    from vilgkit.humaneval.protocols import PROTOCOLS

    protocol = PROTOCOLS[report["protocol"]]
    pct = int(round(report["confidence"] * 100))
    columns = [
        ("turing_pass_rate", "Turing test passing rate (%)") if c.key == "turing" else (c.key, c.label)
        for c in protocol.criteria
    ] + ([] if protocol.name == "vqa" else [("average", "average score")])
    if protocol.name == "vqa":
        columns = [(k, "Quality evaluation avg. score" if k == "quality" else label) for k, label in columns]
    lines = [
        f"# Human evaluation: {protocol.title} — {report['table']}",
        "",
        f"Campaign `{Path(report['campaign']).name}`: {report['items']} items, {report['raters']} raters, "
        f"{report['ratings_given']} of {report['ratings_needed']} ratings given. Means with {pct} % bootstrap "
        f"confidence intervals ({report['bootstrap_rounds']} rounds over items).",
        "",
        "| system | " + " | ".join(label for _, label in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for system, row in report["results"].items():
        name = report["systems"][system].get("name", system)
        digits = {"turing_pass_rate": 1}
        cells = [_fmt(row.get(key), digits.get(key, 2)) for key, _ in columns]
        lines.append(f"| {system}: {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Inter-rater agreement (Krippendorff's alpha):",
        "",
        "| criterion | ordinal | interval | nominal | items with ≥ 2 ratings |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, levels in report["agreement"].items():
        cells = [
            f"{levels[lv]:.3f}" if levels.get(lv) is not None else "—" for lv in ("ordinal", "interval", "nominal")
        ]
        lines.append(
            f"| {protocol.criterion(key).label} | "
            + " | ".join(cells)
            + f" | {levels['items_with_2_or_more_ratings']} |"
        )
    if report["comparison_b_minus_a"]:
        lines += [
            "",
            f"Blind A/B comparison: B − A per criterion (paired over inputs, {pct} % bootstrap CI):",
            "",
            "| criterion | B − A | inputs |",
            "| --- | ---: | ---: |",
        ]
        for key, stat in report["comparison_b_minus_a"].items():
            lines.append(f"| {protocol.criterion(key).label} | {_fmt(stat)} | {stat['items']} |")
    return "\n".join(lines) + "\n"


def write_report(campaign: Campaign, out_dir: str | Path, **kwargs: Any) -> tuple[dict[str, Any], str]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns both."""
    report = campaign_report(campaign, **kwargs)
    markdown = to_markdown(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(markdown, encoding="utf-8")
    return report, markdown
