"""``vilgkit eval RUN_DIR --metrics fid,caption,vqa,shapes``: score a finished run, write JSON + HTML report."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from vilgkit.errors import VilgkitError

HELP = "evaluate a trained run (FID, caption metrics, VQA, Shapes scores) and write eval.json + report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vilgkit.commands import _argtypes as T

    parser.add_argument("run_dir", help="run directory (holds recipe.resolved.yaml and the stage outputs)")
    parser.add_argument(
        "--metrics", default="shapes,caption,vqa,fid", help="comma-separated: fid, caption, vqa, shapes"
    )
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/eval)")
    parser.add_argument("--stage", default=None, help="generator stage to evaluate (default: the last one)")
    parser.add_argument("--num-samples", type=T.positive_int, default=200, help="items of the evaluation data")
    parser.add_argument("--batch-size", type=T.positive_int, default=16)
    parser.add_argument(
        "--num-candidates", type=T.positive_int, default=8, help="images sampled per prompt (best of N)"
    )
    parser.add_argument(
        "--reranker",
        default="self",
        help="self, self_mean, pmi, pmi_shuffled, caption, caption_agreement, none, clip, or a RERANKERS name "
        "(docs/evaluation.md)",
    )
    parser.add_argument("--clip-weights", default=None, help="local open_clip checkpoint for --reranker clip")
    parser.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture for --reranker clip")
    parser.add_argument("--temperature", type=T.non_negative_float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=T.non_negative_int, default=None, help="the k likeliest codes (0: off)")
    parser.add_argument("--top-p", type=T.probability, default=None, help="nucleus mass (1.0: off)")
    parser.add_argument("--cfg-scale", type=T.non_negative_float, default=1.0)
    parser.add_argument("--caption-method", default="greedy", choices=["greedy", "beam", "sample"])
    parser.add_argument("--num-beams", type=T.positive_int, default=4)
    parser.add_argument(
        "--fid-extractor",
        default=None,
        choices=["shapes", "inception"],
        help="FID feature space (default: the recipe's Evaluate stage's, else shapes)",
    )
    parser.add_argument(
        "--fid-weights",
        default=None,
        help="Inception .pth file or Shapes extractor folder (default: the Evaluate stage's)",
    )
    parser.add_argument("--seed", type=T.seed, default=0)
    parser.add_argument("--examples", type=T.non_negative_int, default=8, help="samples per task shown in the report")
    parser.add_argument("--device", default="auto", type=T.device, help="auto, cpu, cuda or cuda:N")


def _fid_settings(run_dir: Path, extractor: str | None, weights: str | None) -> tuple[str, str | None]:
    """The flags, else the run's Evaluate stage's FID feature space and weights (e.g. a local
    Inception file for a real-data run), else the Shapes extractor."""
    import yaml

    from vilgkit.artifacts import RESOLVED_RECIPE
    from vilgkit.stages.evaluate import evaluate_stage_args

    if extractor is not None:
        return extractor, weights
    path = run_dir / RESOLVED_RECIPE
    stage = evaluate_stage_args(yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    extractor = stage.get("fid_extractor") or "shapes"
    return extractor, weights if weights is not None else stage.get("fid_weights")


def main(args: argparse.Namespace) -> int:
    import vilgkit.builtins  # noqa: F401
    from vilgkit.artifacts import RESOLVED_RECIPE, RunDir, record_tree
    from vilgkit.commands._infer import build_reranker, make_out_dir
    from vilgkit.metrics.harness import REPORT_FILE, RESULTS_FILE

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise VilgkitError(f"run directory not found: {run_dir}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    from vilgkit.metrics import METRIC_KEYS

    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if not metrics or unknown:
        raise VilgkitError(
            f"unknown metric(s) {unknown or '(none given)'}; choose from {', '.join(sorted(METRIC_KEYS))}"
        )
    reranker = build_reranker(args.reranker, args.clip_weights, args.clip_model)  # before any work: fails early
    out = Path(args.out) if args.out else run_dir / "eval"
    if out.exists() and not out.is_dir():
        raise VilgkitError(f"--out {out}: is a file; give a folder (it is created if missing)")
    run = RunDir(run_dir)
    if not run.is_run():
        raise VilgkitError(f"{run_dir} is not a vilgkit run directory (no {RESOLVED_RECIPE})")
    fid_extractor, fid_weights = _fid_settings(run_dir, args.fid_extractor, args.fid_weights)
    # writing into the run (the report, or the Shapes FID extractor trained on first use): take its lock
    writes_run = _inside(out, run_dir) or ("fid" in metrics and fid_extractor == "shapes" and fid_weights is None)
    with run.locked("vilgkit eval") if writes_run else contextlib.nullcontext():
        out = make_out_dir(out, "--out")
        record = _evaluate(args, run_dir, out, metrics, reranker, fid_extractor, fid_weights)
        if _inside(out, run_dir):
            record_tree(out)
    width = max(len(k) for k in record["metrics"])
    for key, value in sorted(record["metrics"].items()):
        print(f"{key:<{width}}  {value:.4f}")
    print(f"vilgkit eval: wrote {out / RESULTS_FILE} and {out / REPORT_FILE}")
    return 0


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _evaluate(
    args: argparse.Namespace,
    run_dir: Path,
    out: Path,
    metrics: list[str],
    reranker,
    fid_extractor: str,
    fid_weights: str | None,
):
    from vilgkit.metrics.harness import SamplingSettings
    from vilgkit.stages.evaluate import run_evaluation

    sampling = SamplingSettings(
        num_candidates=args.num_candidates,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        cfg_scale=args.cfg_scale,
        caption_method=args.caption_method,
        num_beams=args.num_beams,
    )
    try:
        return run_evaluation(
            run_dir,
            out,
            metrics=metrics,
            stage=args.stage,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            sampling=sampling,
            reranker=reranker,
            seed=args.seed,
            fid_extractor=fid_extractor,
            fid_weights=fid_weights,
            report_examples=args.examples,
            device=args.device,
        )
    except (ValueError, KeyError) as err:
        raise VilgkitError(str(err)) from None
