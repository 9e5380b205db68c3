"""Which reranker picks the right image? Every reranker side by side on held-out Shapes scenes (issue 26).

For each trained run: the first K held-out scenes of the run's evaluation data (its ``Evaluate``
stage's ``data``, else the recipe's data on its ``test`` split); per prompt N_max = max(--ns)
candidates sampled once (the run's saved sampling settings unless flags override them), every
candidate decoded and checked with the Shapes detector (``image_matches_scene``). The candidate set
of size N is the first N of those (so the sets are nested and "more candidates" compares like with
like). Then, per N and reranker:

* ``first``: prompt accuracy of candidate 0 (no reranking); ``random``: the expected accuracy of a
  uniformly random pick (mean match rate of the N candidates);
* ``reranked``: accuracy of the reranker's pick; ``oracle``: some candidate matches (the ceiling);
* ``gap_recovered``: (reranked − first) / (oracle − first), the share of the reachable points won;
* ``distinct_share`` / ``code_difference``: candidate diversity (:mod:`vilgkit.metrics.diversity`);
* ``rerank_s_per_image`` and ``rerank_over_sampling``: reranking seconds per prompt, and as a
  fraction of the sampling seconds of its N candidates (sampling is timed once at N_max and taken
  as linear in N: one KV-cached batch of B·N rows; each reranker runs once untimed on the first
  batch, so first-call costs do not favour the rerankers timed later).

Writes ``rerank_study.json`` (every number, the settings, the machine) and ``rerank_study.md`` (the
table; with several runs also their mean). Usage::

    python benchmarks/rerank_study.py runs/shapes_tiny --k 200 --ns 1,4,8,16 --out rerank_study
    python benchmarks/rerank_study.py runs/seed0 runs/seed1 runs/seed2 --k 200   # + the 3-run mean
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: the rerankers compared, by their short names (vilgkit.reranker_names)
STUDY_RERANKERS = [
    "self",
    "self_mean",
    "pmi",
    "pmi_shuffled",
    "caption",
    "caption_agreement",
    "matcher",
    "pixel_matcher",
    "consensus",
    "self+consensus",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="trained run directories (e.g. three training seeds)")
    parser.add_argument("--k", type=int, default=200, help="held-out scenes (prompts) per run")
    parser.add_argument("--ns", default="1,4,8,16", help="candidate counts N (comma-separated)")
    parser.add_argument("--rerankers", default=",".join(STUDY_RERANKERS), help="short reranker names")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="batch i samples with seed + i")
    parser.add_argument("--temperature", type=float, default=None, help="default: the run's saved setting")
    parser.add_argument("--top-k", type=int, default=None, help="default: the run's saved setting (0: off)")
    parser.add_argument("--cfg-scale", type=float, default=None, help="default: the run's saved setting")
    parser.add_argument("--out", default="rerank_study", help="folder for rerank_study.json and .md")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    args.ns = sorted({int(x) for x in args.ns.split(",") if x.strip()})
    args.rerankers = [r.strip() for r in args.rerankers.split(",") if r.strip()]
    from vilgkit.reranker_names import RERANKER_ALIASES

    usable = [name for name in RERANKER_ALIASES if name not in ("none", "clip")]  # none: the "first" column

    def usable_name(name: str) -> bool:  # a short name, or an ensemble of them ("self+pixel_matcher")
        return all(part.strip() in usable for part in name.split("+"))

    bad = [r for r in args.rerankers if not usable_name(r)]
    if bad or not args.ns or min(args.ns) < 1 or args.k < 1 or args.batch_size < 1:
        parser.error(f"--rerankers from {usable} or a+b ensembles; positive --ns, --k, --batch-size (bad: {bad})")
    return args


def eval_items(run_dir: Path, k: int) -> list[dict[str, Any]]:
    """The first k held-out samples the run's evaluation uses."""
    from vilgkit import artifacts
    from vilgkit.interfaces import RunContext
    from vilgkit.stages.evaluate import default_eval_data, recipe_eval_data

    recipe = artifacts.read_recipe(run_dir)
    data, _ = recipe_eval_data(recipe) or default_eval_data(
        RunContext(run_dir=run_dir, components={}, recipe=recipe), k
    )
    from torch.utils.data import IterableDataset

    if isinstance(data, IterableDataset):
        items = list(itertools.islice(iter(data), k))
    else:
        items = [data[i] for i in range(min(k, len(data)))]
    if not items or "scene" not in items[0]:
        raise SystemExit(f"rerank_study: {run_dir}'s evaluation data has no Shapes scenes to check")
    return items


def sampling_settings(
    pipe, temperature: float | None = None, top_k: int | None = None, cfg_scale: float | None = None
) -> dict[str, Any]:
    """The run's saved sampling settings, the given values (flags) overriding them (``top_k`` 0: off)."""
    saved = pipe.settings
    top_k = saved.top_k if top_k is None else top_k
    return {
        "temperature": saved.temperature if temperature is None else temperature,
        "top_k": top_k or None,
        "top_p": saved.top_p,
        "cfg_scale": saved.cfg_scale if cfg_scale is None else cfg_scale,
    }


def study_run(run_dir: Path, args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Sample, check and rerank one run; returns its per-N, per-reranker numbers."""
    from vilgkit import Pipeline
    from vilgkit.data.shapes import image_matches_scene
    from vilgkit.errors import InputError
    from vilgkit.interfaces import RerankInputs
    from vilgkit.metrics.diversity import per_prompt_diversity
    from vilgkit.reranker_names import build_named_reranker

    pipe = Pipeline.from_run_dir(run_dir, device=args.device)
    items = eval_items(run_dir, args.k)
    settings = sampling_settings(pipe, args.temperature, args.top_k, args.cfg_scale)
    rerankers = {label: build_named_reranker(label) for label in args.rerankers}
    for label, reranker in list(rerankers.items()):
        try:  # a matcher reranker on a run without a matcher, or whose matcher reads the other input
            pipe.check_reranker(reranker)
        except InputError as err:
            log(f"rerank_study: {label} left out: {err}")
            del rerankers[label]
    n_max = max(args.ns)
    matches, diversity, sampling_s = [], {n: [] for n in args.ns}, 0.0
    picks = {(label, n): [] for label in rerankers for n in args.ns}
    rerank_s = dict.fromkeys(picks, 0.0)
    for b, start in enumerate(range(0, len(items), args.batch_size)):
        chunk = items[start : start + args.batch_size]
        prompts = [it["caption"] for it in chunk]
        t = time.perf_counter()
        codes, ids, mask = pipe.sample_codes(prompts, n_max, seed=args.seed + b, truncate=True, **settings)
        sampling_s += time.perf_counter() - t
        images = pipe.decode_codes(codes, ids.repeat_interleave(n_max, 0), mask.repeat_interleave(n_max, 0)).cpu()
        ok = [bool(image_matches_scene(img, chunk[r // n_max]["scene"])["match"]) for r, img in enumerate(images)]
        matches.append(torch.tensor(ok).view(len(chunk), n_max))
        grid = codes.view(len(chunk), n_max, *codes.shape[1:])
        for n in args.ns:
            subset = grid[:, :n].reshape(-1, *codes.shape[1:])
            subset_images = images.view(len(chunk), n_max, *images.shape[1:])[:, :n].flatten(0, 1)
            diversity[n].append(per_prompt_diversity(subset, n))
            for label, reranker in rerankers.items():
                if n == 1:  # nothing to choose from
                    picks[(label, n)].append(torch.zeros(len(chunk), dtype=torch.long))
                    continue
                inputs = RerankInputs(
                    num_candidates=n,
                    codes=subset,
                    text_ids=ids.to(subset.device),
                    text_mask=mask.to(subset.device),
                    prompts=prompts,
                    images=subset_images,
                    generator=pipe.generator,
                    matcher=pipe.matcher,
                )
                if b == 0:  # untimed warm-up: first-call costs (allocations, memo tables) would favour the later ones
                    reranker.rerank(inputs)
                result = reranker.rerank(inputs)
                rerank_s[(label, n)] += result.seconds
                picks[(label, n)].append(result.best)
        log(f"rerank_study: {run_dir} batch {b + 1}/{-(-len(items) // args.batch_size)}")
    ok_all = torch.cat(matches).float()  # [K, N_max]
    k = ok_all.shape[0]
    rows = []
    for n in args.ns:
        first, oracle = float(ok_all[:, 0].mean()), float(ok_all[:, :n].amax(1).mean())
        div = {key: float(torch.cat([d[key] for d in diversity[n]]).mean()) for key in diversity[n][0]}
        sampling_per_image = sampling_s / k * n / n_max
        for label in rerankers:
            best = torch.cat(picks[(label, n)])
            reranked = float(ok_all[torch.arange(k), best].mean())
            per_image = rerank_s[(label, n)] / k
            rows.append(
                {
                    "N": n,
                    "reranker": label,
                    "first": first,
                    "random": float(ok_all[:, :n].mean()),
                    "reranked": reranked,
                    "oracle": oracle,
                    "gap_recovered": (reranked - first) / (oracle - first) if oracle > first else None,
                    "distinct_share": div["distinct_share"],
                    "code_difference": div["mean_code_difference"],
                    "sampling_s_per_image": sampling_per_image,
                    "rerank_s_per_image": per_image,
                    "rerank_over_sampling": per_image / sampling_per_image if sampling_per_image else None,
                }
            )
    return {"run_dir": str(run_dir), "k": k, "sampling": settings, "sampling_s": sampling_s, "rows": rows}


def mean_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (N, reranker): the mean of every number over the runs (``gap_recovered`` from the means)."""
    out = []
    for i, row in enumerate(runs[0]["rows"]):
        same = [run["rows"][i] for run in runs]
        numbers = [key for key in row if key not in ("N", "reranker") and all(r[key] is not None for r in same)]
        mean = {key: sum(r[key] for r in same) / len(same) for key in numbers}
        gap = mean["oracle"] - mean["first"]
        mean["gap_recovered"] = (mean["reranked"] - mean["first"]) / gap if gap > 0 else None
        out.append({"N": row["N"], "reranker": row["reranker"], **mean})
    return out


def never_hurt(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Per reranker: whether its accuracy never drops as N grows."""
    out = {}
    for label in dict.fromkeys(r["reranker"] for r in rows):
        acc = [r["reranked"] for r in sorted((r for r in rows if r["reranker"] == label), key=lambda r: r["N"])]
        out[label] = all(b >= a for a, b in zip(acc, acc[1:]))
    return out


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The table: one line per (N, reranker)."""

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f} %"

    def num(x, fmt):
        return "–" if x is None else format(x, fmt)

    head = (
        f"### {title}\n\n| N | reranker | first | reranked | oracle (any) | gap recovered | distinct | "
        "code diff | rerank s / image | rerank / sampling |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | "
        "---: | ---: | ---: |\n"
    )
    lines = [
        f"| {r['N']} | {r['reranker']} | {pct(r['first'])} | {pct(r['reranked'])} | {pct(r['oracle'])} | "
        f"{pct(r['gap_recovered'])} | {pct(r['distinct_share'])} | {num(r['code_difference'], '.3f')} | "
        f"{num(r['rerank_s_per_image'], '.4f')} | {num(r['rerank_over_sampling'], '.2f')} |"
        for r in rows
    ]
    hurt = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in never_hurt(rows).items())
    return head + "\n".join(lines) + f"\n\nMore candidates never lower the accuracy: {hurt}\n"


def machine() -> str:
    """The CPU model (``lscpu``'s "Model name") and the thread count."""
    from vilgkit.dispatch import cpu_model

    return f"{cpu_model()}; torch threads {torch.get_num_threads()}"


def main(argv: list[str] | None = None, log=print) -> int:
    import vilgkit.builtins  # noqa: F401
    from vilgkit.plugins import get_plugin_manager

    args = parse_args(argv)
    get_plugin_manager()
    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "recipe.resolved.yaml").is_file():
            print(f"rerank_study: no trained run at {run_dir}", file=sys.stderr)
            return 2
    torch.manual_seed(args.seed)
    runs = [study_run(Path(r), args, log) for r in args.run_dirs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python benchmarks/rerank_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "device": args.device,
        "date": time.strftime("%Y-%m-%d"),
        "ns": args.ns,
        "runs": runs,
        "mean": mean_rows(runs) if len(runs) > 1 else None,
        "never_hurt": never_hurt(mean_rows(runs) if len(runs) > 1 else runs[0]["rows"]),
    }
    (out / "rerank_study.json").write_text(json.dumps(record, indent=2))
    parts = [f"`{record['command']}` — {record['machine']}, {record['date']}\n"]
    parts += [markdown(run["rows"], f"{run['run_dir']} ({run['k']} scenes)") for run in runs]
    if record["mean"]:
        parts.append(markdown(record["mean"], f"mean of {len(runs)} runs"))
    (out / "rerank_study.md").write_text("\n".join(parts))
    log("\n".join(parts))
    log(f"rerank_study: wrote {out / 'rerank_study.json'} and {out / 'rerank_study.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
