"""Signals the shipped rerankers do not use: does any pick the right candidate more often? (issue 26)

For each trained run: the rerank study's held-out scenes (``rerank_study.eval_items``), N candidates
per prompt sampled once with the run's saved settings (batch i with seed ``--seed`` + i, as the study
samples), every candidate decoded and checked with the Shapes detector. Each candidate then gets
these scores (higher = better):

* ``self``: ``log P(prompt | codes)``, what ``SelfReranker`` scores;
* ``self_reencoded``: ``log P(prompt | encode(decode(codes)))``. Sampled codes are unlike the
  encoder's (a decode → encode round trip keeps about a fifth of them), and the image→text direction
  was trained on the encoder's; re-encoding hands it codes of the kind it knows;
* ``image_cond`` / ``image_guided``: ``log P(codes | prompt)`` from one teacher-forced text→image
  pass, without and with the run's guidance scale (the distribution the codes were drawn from,
  before top-k); ``image_worst4``: the sum of the four least likely codes under guidance (one stray
  code is what an extra blob is);
* ``consensus``: ``ConsensusReranker`` (minus the mean distance of the decoded image to the prompt's
  other candidates); ``feature_consensus``: the same on the image tokenizer's continuous encoder
  features instead of pooled pixels.

Combinations ``a+b`` sum the members' per-prompt z-scores, as ``EnsembleReranker`` does. Per N and
signal it reports the pick's accuracy and the share of the first → any-candidate gap recovered,
on all prompts and on each half of them (the halves show how much one set of prompts can mislead),
with a bootstrap 90 % interval over prompts for the run's gap; over several runs, the gaps come
from the runs' mean accuracies. Writes ``rerank_signals.json`` and
``rerank_signals.md``. Usage::

    python benchmarks/rerank_signals.py runs/seed0 runs/seed1 runs/seed2 --k 400 --n 16 --out rerank_signals
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: the single signals, in the order of the table
SIGNALS = [
    "self",
    "self_reencoded",
    "image_cond",
    "image_guided",
    "image_worst4",
    "consensus",
    "feature_consensus",
]

#: the combinations scored by default (summed per-prompt z-scores)
COMBINATIONS = [
    "self+consensus",
    "self+self_reencoded",
    "self_reencoded+consensus",
    "self+self_reencoded+consensus",
    "self+feature_consensus",
    "self+consensus+image_guided",
    "self+consensus+image_worst4",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="trained run directories (e.g. five training seeds)")
    parser.add_argument("--k", type=int, default=400, help="held-out scenes (prompts) per run")
    parser.add_argument("--n", type=int, default=16, help="candidates sampled per prompt (the largest N)")
    parser.add_argument("--ns", default="4,8,16", help="candidate counts N compared (each at most --n)")
    parser.add_argument("--combinations", default=",".join(COMBINATIONS), help="'+'-joined signal names")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per sampling batch")
    parser.add_argument("--seed", type=int, default=0, help="batch i samples with seed + i")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the prompts for the interval")
    parser.add_argument("--out", default="rerank_signals", help="folder for rerank_signals.json and .md")
    args = parser.parse_args(argv)
    args.ns = sorted({int(x) for x in args.ns.split(",") if x.strip()})
    args.combinations = [c.strip() for c in args.combinations.split(",") if c.strip()]
    bad = [c for c in args.combinations if any(part not in SIGNALS for part in c.split("+"))]
    if bad or not args.ns or min(args.ns) < 2 or max(args.ns) > args.n or args.k < 2 or args.batch_size < 1:
        parser.error(
            f"--combinations of {SIGNALS} joined by '+' (bad: {bad}); --ns from 2 to --n; --k >= 2; --batch-size >= 1"
        )
    return args


@torch.no_grad()
def image_log_likelihoods(generator, codes, ids, mask, cfg_scale: float) -> dict[str, torch.Tensor]:
    """Per-code ``log P(code | prompt, earlier codes)`` ``[R, h·w]``, without and with guidance.

    The generator is the Pipeline's, in eval mode (``image_hidden_states`` leaves the mode to the caller).
    """
    from vilgkit.models.sampling import guide

    def logits_given(text_ids, text_mask):  # [R, h·w, V]
        return generator.image_head(generator.image_hidden_states(text_ids, text_mask, codes)).float()

    cond = logits_given(ids, mask)
    uncond = logits_given(*generator.empty_prompt(ids.shape[0], ids.shape[1], ids.device))
    guided = guide(torch.cat([cond, uncond]), cfg_scale)  # what sampling guides with
    pick = codes.flatten(1)[..., None]
    return {
        "cond": cond.log_softmax(-1).gather(-1, pick).squeeze(-1),
        "guided": guided.log_softmax(-1).gather(-1, pick).squeeze(-1),
    }


def batch_signals(pipe, codes, ids, mask, images, n: int, cfg_scale: float) -> dict[str, torch.Tensor]:
    """Every signal of :data:`SIGNALS` for one batch of B prompts × n candidates: ``name → Float[B, n]``."""
    from vilgkit.interfaces import RerankInputs
    from vilgkit.self_rerank import self_rerank_scores
    from vilgkit_rerank.consensus import ConsensusReranker

    generator, tokenizer = pipe.generator, pipe.image_tokenizer
    rows_ids, rows_mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    per_code = image_log_likelihoods(generator, codes, rows_ids, rows_mask, cfg_scale)
    with torch.no_grad():
        reencoded = tokenizer.encode(images)
        features = tokenizer.encoder(images)  # continuous, before quantising (VQ-VAE and VQGAN tokenizers)
    out = {
        "self": self_rerank_scores(generator, codes, ids, mask, n),
        "self_reencoded": self_rerank_scores(generator, reencoded, ids, mask, n),
        "image_cond": per_code["cond"].sum(-1),
        "image_guided": per_code["guided"].sum(-1),
        "image_worst4": per_code["guided"].topk(4, dim=-1, largest=False).values.sum(-1),
        "consensus": ConsensusReranker().score(RerankInputs(n, codes, images=images)),
        "feature_consensus": ConsensusReranker(pool=1).score(RerankInputs(n, codes, images=features)),
    }
    return {name: scores.float().cpu().reshape(-1, n) for name, scores in out.items()}


def sample_run(run_dir: Path, args: argparse.Namespace, log=print) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sample and check one run's candidates: ``(ok Bool[K, n], name → Float[K, n] scores)``."""
    from rerank_study import eval_items, sampling_settings

    from vilgkit import Pipeline
    from vilgkit.data.shapes import image_matches_scene

    pipe = Pipeline.from_run_dir(run_dir, device="cpu")
    items = eval_items(run_dir, args.k)
    settings = sampling_settings(pipe)
    ok, signals = [], {name: [] for name in SIGNALS}
    batches = -(-len(items) // args.batch_size)
    for b, start in enumerate(range(0, len(items), args.batch_size)):
        chunk = items[start : start + args.batch_size]
        codes, ids, mask = pipe.sample_codes(
            [it["caption"] for it in chunk], args.n, seed=args.seed + b, truncate=True, **settings
        )
        images = pipe.decode_codes(codes, ids.repeat_interleave(args.n, 0), mask.repeat_interleave(args.n, 0))
        scenes = [chunk[r // args.n]["scene"] for r in range(len(images))]
        verdicts = [bool(image_matches_scene(img, scene)["match"]) for img, scene in zip(images, scenes)]
        ok.append(torch.tensor(verdicts).view(len(chunk), args.n))
        for name, scores in batch_signals(pipe, codes, ids, mask, images, args.n, settings["cfg_scale"]).items():
            signals[name].append(scores)
        log(f"rerank_signals: {run_dir} batch {b + 1}/{batches}")
    return torch.cat(ok), {name: torch.cat(parts) for name, parts in signals.items()}


def accuracies(picked: torch.Tensor, first: torch.Tensor, any_ok: torch.Tensor) -> dict[str, float | None]:
    """Accuracy of the picks, of the first candidate and of any candidate, and the share of the gap recovered."""
    return with_gap({"first": float(first.mean()), "reranked": float(picked.mean()), "any": float(any_ok.mean())})


def with_gap(acc: dict[str, Any]) -> dict[str, Any]:
    """``acc`` plus ``gap_recovered``: (reranked − first) / (any − first), None without a gap."""
    reachable = acc["any"] - acc["first"]
    return {**acc, "gap_recovered": (acc["reranked"] - acc["first"]) / reachable if reachable > 0 else None}


def mean_accuracies(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' mean accuracies, and the gap recovered from those means (not the mean of the gaps)."""
    return with_gap({key: sum(r[key] for r in rows) / len(rows) for key in ("first", "reranked", "any")})


def bootstrap_gaps(picked: torch.Tensor, first: torch.Tensor, any_ok: torch.Tensor) -> torch.Tensor:
    """The gap recovered in each resample (rows of ``[R, K]`` 0/1 tensors); resamples without a gap are left out."""
    p, f, a = picked.mean(dim=1), first.mean(dim=1), any_ok.mean(dim=1)
    reachable = a - f
    return ((p - f) / reachable)[reachable > 0]


def evaluate(ok: torch.Tensor, signals: dict[str, torch.Tensor], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per N and signal: accuracy and gap recovered on all prompts, on each half, and the bootstrap interval."""
    from vilgkit_rerank.ensemble import per_prompt_zscores

    k = ok.shape[0]
    halves = {"first half": slice(0, k // 2), "second half": slice(k // 2, k)}
    rng = torch.Generator().manual_seed(0)
    resamples = torch.randint(0, k, (args.bootstrap, k), generator=rng)
    rows = []
    for n in args.ns:
        sub_ok = ok[:, :n].float()
        first, any_ok = sub_ok[:, 0], sub_ok.amax(dim=1)
        for label in SIGNALS + args.combinations:
            if label in signals:
                scores = signals[label][:, :n]
            else:  # a combination, scored as EnsembleReranker scores
                scores = sum(per_prompt_zscores(signals[part][:, :n]) for part in label.split("+"))
            picked = sub_ok[torch.arange(k), scores.argmax(dim=1)]
            boot = bootstrap_gaps(picked[resamples], first[resamples], any_ok[resamples])
            row = {
                "N": n,
                "signal": label,
                **accuracies(picked, first, any_ok),
                "gap_interval_90": [float(boot.quantile(0.05)), float(boot.quantile(0.95))] if len(boot) else None,
                "halves": {name: accuracies(picked[part], first[part], any_ok[part]) for name, part in halves.items()},
            }
            rows.append(row)
    return rows


def mean_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (N, signal): mean accuracies over the runs, the gap from those means, and each half's."""
    out = []
    for i, row in enumerate(runs[0]):
        same = [run[i] for run in runs]
        halves = {name: mean_accuracies([r["halves"][name] for r in same]) for name in row["halves"]}
        mean = {**mean_accuracies(same), "per_run_reranked": [r["reranked"] for r in same], "halves": halves}
        out.append({"N": row["N"], "signal": row["signal"], **mean})
    return out


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """One table line per (N, signal)."""

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f} %"

    interval = "gap 90 % interval" if "gap_interval_90" in rows[0] else "reranked, per run"
    head = (
        f"### {title}\n\n| N | signal | first | reranked | any | gap recovered | first half | second half | "
        f"{interval} |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for r in rows:
        if "gap_interval_90" in r:
            extra = "–" if r["gap_interval_90"] is None else " to ".join(pct(x) for x in r["gap_interval_90"])
        else:
            extra = " / ".join(f"{100 * x:.1f}" for x in r["per_run_reranked"])
        lines.append(
            f"| {r['N']} | {r['signal']} | {pct(r['first'])} | {pct(r['reranked'])} | {pct(r['any'])} | "
            f"{pct(r['gap_recovered'])} | {pct(r['halves']['first half']['gap_recovered'])} | "
            f"{pct(r['halves']['second half']['gap_recovered'])} | {extra} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, log=print) -> int:
    import vilgkit.builtins  # noqa: F401
    from vilgkit.plugins import get_plugin_manager

    args = parse_args(argv)
    get_plugin_manager()
    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "recipe.resolved.yaml").is_file():
            print(f"rerank_signals: no trained run at {run_dir}", file=sys.stderr)
            return 2
    from rerank_study import machine

    runs = []
    for run_dir in args.run_dirs:
        ok, signals = sample_run(Path(run_dir), args, log)
        runs.append({"run_dir": str(run_dir), "k": ok.shape[0], "rows": evaluate(ok, signals, args)})
    mean = mean_rows([run["rows"] for run in runs]) if len(runs) > 1 else None
    record = {
        "command": "python benchmarks/rerank_signals.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
        "mean": mean,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rerank_signals.json").write_text(json.dumps(record, indent=2))
    parts = [f"`{record['command']}` — {record['machine']}, {record['date']}\n"]
    parts += [markdown(run["rows"], f"{run['run_dir']} ({run['k']} scenes)") for run in runs]
    if mean:
        parts.append(markdown(mean, f"mean of {len(runs)} runs"))
    (out / "rerank_signals.md").write_text("\n".join(parts))
    log("\n".join(parts))
    log(f"rerank_signals: wrote {out / 'rerank_signals.json'} and {out / 'rerank_signals.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
