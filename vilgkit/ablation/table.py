"""The Markdown table of an ablation record: per row and metric mean ± std [bootstrap interval],
which differences the intervals resolve, the claims' verdicts, the training curves, the stages
(run or reused) and the machine."""

from __future__ import annotations

from typing import Any

from vilgkit.ablation.config import METRICS
from vilgkit.ablation.stats import Summary, fmt, overlap, verdict

UNRESOLVED = "cannot be resolved at this size"


def _summary(d: dict[str, Any]) -> Summary:
    return Summary(
        tuple(d["values"]),
        d["mean"],
        d["std"],
        d["low"],
        d["high"],
        tuple(d["counts"]) if d.get("counts") else None,
    )


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in METRICS if any(k in r["metrics"] for r in rows)]


def resolution(rows: list[dict[str, Any]], key: str) -> str:
    """One sentence per metric: the best row, and which rows its interval does or does not separate."""
    spec = METRICS[key]
    have = [(r["row"], _summary(r["metrics"][key])) for r in rows if key in r["metrics"]]
    if len(have) < 2:
        return f"{spec.title}: one row only."
    best_row, best = (min if spec.lower_is_better else max)(have, key=lambda x: x[1].mean)
    tied = [n for n, s in have if n != best_row and overlap(best, s)]
    apart = [n for n, s in have if n != best_row and not overlap(best, s)]
    if not apart:
        return f"{spec.title}: every interval overlaps row {best_row}'s: the rows {UNRESOLVED} (no ranking)."
    text = f"{spec.title}: row {best_row} is best, its interval clear of row(s) {', '.join(map(str, apart))}"
    if tied:
        text += f"; against row(s) {', '.join(map(str, tied))} the order {UNRESOLVED}"
    return text + "."


def markdown_table(record: dict[str, Any]) -> str:
    """The whole ``ablation.md``."""
    rows = record["rows"]
    cols = _columns(rows)
    reconstruction = any(r.get("labels") for r in rows)
    head = ["row", "Generator", "Reconstructor"] if reconstruction else ["row", "what the row trains"]
    lines = [f"# {record['title']}", ""]
    lines.append("| " + " | ".join(head + ["seeds"] + [METRICS[k].title for k in cols]) + " |")
    lines.append("|" + "---:|" + "---|" * (len(head) - 1) + "---:|" + "---:|" * len(cols))
    for r in rows:
        name = [r["labels"].get("generator", "—"), r["labels"].get("reconstructor", "—")] if reconstruction else []
        cells = [str(r["row"]), *(name or [r["label"]]), str(len(r["seeds"]))]
        for k in cols:
            cells.append(fmt(_summary(r["metrics"][k]), METRICS[k].digits) if k in r["metrics"] else "—")
        lines.append("| " + " | ".join(cells) + " |")
    conf = record["bootstrap"]["confidence"]
    lines += [
        "",
        f"Cells: mean ± standard deviation over the training seeds {record['seeds']} "
        f"[{conf:.0%} bootstrap interval of the mean: seeds resampled, and for accuracies each seed's "
        f"items too; {record['bootstrap']['resamples']} resamples]. Stages shared by every seed "
        f"(trained once, seed {record['shared_seed']}): {', '.join(record['shared_stages']) or 'none'}.",
        "",
        "Which differences this size resolves (intervals that overlap are not ranked):",
        "",
    ]
    lines += [f"* {resolution(rows, k)}" for k in cols]
    lines += _claims(record, rows)
    lines += _curves(rows)
    lines += _stages(record)
    return "\n".join(lines) + "\n"


def _claims(record: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    if not record["claims"]:
        return []
    by_row = {r["row"]: r for r in rows}
    out = ["", "| claim | metric | better row | worse row | verdict |", "|---|---|---|---|---|"]
    for c in record["claims"]:
        for key in c["metrics"]:
            spec = METRICS[key]
            b, w = by_row.get(c["better"]), by_row.get(c["worse"])
            if b is None or w is None or key not in b["metrics"] or key not in w["metrics"]:
                out.append(f"| {c['claim']} | {spec.title} | row {c['better']} | row {c['worse']} | not measured |")
                continue
            sb, sw = _summary(b["metrics"][key]), _summary(w["metrics"][key])
            out.append(
                f"| {c['claim']} | {spec.title} | {c['better']}: {fmt(sb, spec.digits)} | "
                f"{c['worse']}: {fmt(sw, spec.digits)} | **{verdict(sb, sw, spec.lower_is_better)}** |"
            )
    return out


def _curves(rows: list[dict[str, Any]], points: int = 6) -> list[str]:
    curves = {r["row"]: [m["curve"] for m in r["per_seed"].values() if "curve" in m] for r in rows}
    curves = {n: c for n, c in curves.items() if c}
    if not curves:
        return []
    steps = sorted({s for c in curves.values() for seed in c for s, _ in seed})
    shown = sorted({steps[round(i * (len(steps) - 1) / (points - 1))] for i in range(points)}) if steps else []
    out = ["", "Training loss (mean over seeds) at logged steps:", ""]
    out.append("| row | " + " | ".join(f"step {s}" for s in shown) + " |")
    out.append("|---:|" + "---:|" * len(shown))
    for n, seeds in curves.items():
        cells = []
        for step in shown:
            vals = [v for seed in seeds for s, v in seed if s == step]
            cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "—")
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return out


def _stages(record: dict[str, Any]) -> list[str]:
    out = [
        "",
        "| stage | its seed | wall time (s) | run by row/seed | reused by row/seed | load avg before → after |",
        "|---|---:|---:|---|---|---|",
    ]
    for s in record["stages"]:
        reused = ", ".join(
            f"{u['row']}/{u['seed']}" + (" (copy)" if u["how"] == "copied" else "") for u in s["reused_by"]
        )
        ran = f"{s.get('row', '?')}/{s.get('run_seed', '?')}"
        if "record" in s:
            ran += f" (merged from {s['record']})"
        elif not s["ran"]:
            ran += " (earlier invocation)"
        out.append(
            f"| {s['stage']} | {s.get('seed', '?')} | {s['seconds']:.0f} | {ran} | {reused or '—'} | "
            f"{s.get('load_before', float('nan')):.1f} → {s.get('load_after', float('nan')):.1f} |"
        )
    ls, le = record["load_average_start"], record["load_average_end"]
    scratch = sum(s["seconds"] for s in record["stages"])
    out += [
        "",
        f"Sum of the stage wall times (the table from scratch): {scratch / 60:.1f} min. This invocation: "
        f"{record['wall_seconds'] / 60:.1f} min on {record['machine']} ({record['torch_threads']} torch threads); "
        f"load average (1/5/15 min) {ls[0]:.1f}/{ls[1]:.1f}/{ls[2]:.1f} → {le[0]:.1f}/{le[1]:.1f}/{le[2]:.1f}.",
        "",
        f"Command: `{record['command']}`",
    ]
    for src in record.get("merged") or []:
        pairs = ", ".join(f"{r}/{k}" for r, k in src["pairs"])
        wall = f"{src['wall_seconds'] / 60:.1f} min, " if isinstance(src.get("wall_seconds"), (int, float)) else ""
        out += ["", f"Merged from `{src['file']}` (row/seed {pairs}; {wall}{src['machine']}): `{src['command']}`"]
    return out
