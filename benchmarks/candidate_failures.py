"""Why do sampled candidates fail, and can the model itself tell? A diagnosis for reranking (issue 26).

For each trained run: the first K held-out scenes of its evaluation data (as ``rerank_study.py``
reads them), N candidates per prompt sampled with the run's saved settings, each decoded and checked
with the Shapes detector. It reports:

* **what is wrong** with the failing candidates, from the detector's ``missing`` / ``extra`` lists:
  one attribute of one object wrong (``shape``, ``color``, ``position``, ``size``), several
  attributes wrong, an object missing, an extra object;
* **whether the model sees it**: every candidate is captioned by the run's generator from its
  decoded pixels (``Pipeline.image_to_text``: re-encoded by the image tokenizer, greedy) and the
  caption scored against the prompt's scene; ``caption right | detector right`` and
  ``caption right | detector wrong`` say how well the model's own image→text agrees with the
  detector on generated images (a reranker built on the model cannot do better than that);
* **round trip**: the share of code positions that come back unchanged when the decoded candidate
  is encoded again (sampled codes the encoder itself would not produce), over all candidates and
  separately over those the detector accepts and rejects (does the round trip tell them apart?).

Writes ``candidate_failures.json`` and ``.md`` into ``--out``. Usage::

    python benchmarks/candidate_failures.py runs/shapes_tiny --k 200 --n 8
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: failure kinds, in the order of the table
KINDS = ["shape", "color", "position", "size", "several attributes", "missing object", "extra object"]


def failure_kind(missing: list[tuple], extra: list[tuple]) -> str:
    """One failing candidate's kind from the detector's unmatched prompted (``missing``) and found
    (``extra``) objects, each an attribute tuple ordered as ``ATTRIBUTES``."""
    from vilgkit.data.shapes import ATTRIBUTES

    if len(extra) > len(missing):
        return "extra object"
    if len(missing) > len(extra):
        return "missing object"
    wrong = set()
    for want in missing:  # pair each prompted object with the found one closest to it
        got = min(extra, key=lambda e: sum(a != b for a, b in zip(want, e)))
        wrong |= {ATTRIBUTES[i] for i, (a, b) in enumerate(zip(want, got)) if a != b}
    return wrong.pop() if len(wrong) == 1 else "several attributes"


def diagnose_run(run_dir: Path, k: int, n: int, seed: int, batch_size: int, log=print) -> dict[str, Any]:
    """Sample, check, caption and re-encode one run's candidates; the tallies of :data:`KINDS` and
    the agreement figures."""
    from rerank_study import eval_items, sampling_settings

    from vilgkit import Pipeline
    from vilgkit.data.shapes import caption_matches_scene, image_matches_scene

    pipe = Pipeline.from_run_dir(run_dir, device="cpu")
    items = eval_items(run_dir, k)
    settings = sampling_settings(pipe)
    kinds: collections.Counter = collections.Counter()
    right = caption_right = caption_right_when_wrong = candidates = 0
    same_when = {True: [], False: []}  # round-trip share per candidate, keyed by the detector's verdict
    for b, start in enumerate(range(0, len(items), batch_size)):
        chunk = items[start : start + batch_size]
        codes, _, _ = pipe.sample_codes([it["caption"] for it in chunk], n, seed=seed + b, truncate=True, **settings)
        images = pipe.decode_codes(codes).clamp(-1, 1)
        with torch.no_grad():
            same = (pipe.image_tokenizer.encode(images) == codes).flatten(1).float().mean(1)
        captions = pipe.image_to_text(list(images), method="greedy")
        for row, (image, text) in enumerate(zip(images, captions)):
            scene = chunk[row // n]["scene"]
            check = image_matches_scene(image, scene)
            same_when[bool(check["match"])].append(float(same[row]))
            said_right = bool(caption_matches_scene(text, scene)["all_correct"])
            candidates += 1
            if check["match"]:
                right += 1
                caption_right += said_right
            else:
                kinds[failure_kind(check["missing"], check["extra"])] += 1
                caption_right_when_wrong += said_right
        log(f"candidate_failures: {run_dir} batch {b + 1}/{-(-len(items) // batch_size)}")
    wrong = candidates - right
    return {
        "run_dir": str(run_dir),
        "k": len(items),
        "n": n,
        "sampling": settings,
        "candidates": candidates,
        "right": right,
        "failures": {kind: kinds[kind] for kind in KINDS},
        "caption_right_given_right": caption_right / right if right else None,
        "caption_right_given_wrong": caption_right_when_wrong / wrong if wrong else None,
        "caption_detector_agreement": (caption_right + wrong - caption_right_when_wrong) / candidates,
        "round_trip_same_codes": (sum(same_when[True]) + sum(same_when[False])) / candidates,
        "round_trip_given_right": sum(same_when[True]) / len(same_when[True]) if same_when[True] else None,
        "round_trip_given_wrong": sum(same_when[False]) / len(same_when[False]) if same_when[False] else None,
    }


def markdown(runs: list[dict[str, Any]]) -> str:
    """One table row per run: failure shares and the agreement figures."""

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f} %"

    head = (
        "| run | candidates right | "
        + " | ".join(f"wrong: {kind}" for kind in KINDS)
        + " | caption right, detector right | caption right, detector wrong | agreement"
        + " | codes unchanged by a round trip (detector right / wrong) |\n"
        + "| --- |"
        + " ---: |" * (len(KINDS) + 5)
        + "\n"
    )
    lines = []
    for r in runs:
        wrong = r["candidates"] - r["right"]
        shares = " | ".join(pct(r["failures"][kind] / wrong if wrong else None) for kind in KINDS)
        lines.append(
            f"| {r['run_dir']} | {pct(r['right'] / r['candidates'])} | {shares} | "
            f"{pct(r['caption_right_given_right'])} | {pct(r['caption_right_given_wrong'])} | "
            f"{pct(r['caption_detector_agreement'])} | {pct(r['round_trip_same_codes'])} "
            f"({pct(r.get('round_trip_given_right'))} / {pct(r.get('round_trip_given_wrong'))}) |"
        )
    return head + "\n".join(lines) + "\n\n(failure shares are of the failing candidates)\n"


def main(argv: list[str] | None = None, log=print) -> int:
    from rerank_study import machine

    import vilgkit.builtins  # noqa: F401
    from vilgkit.plugins import get_plugin_manager

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="trained run directories")
    parser.add_argument("--k", type=int, default=200, help="held-out scenes (prompts) per run")
    parser.add_argument("--n", type=int, default=8, help="candidates per prompt")
    parser.add_argument("--seed", type=int, default=0, help="batch i samples with seed + i")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per sampling batch")
    parser.add_argument("--out", default="candidate_failures", help="folder for the .json and .md")
    args = parser.parse_args(argv)
    if min(args.k, args.n, args.batch_size) < 1:
        parser.error("--k, --n and --batch-size must be positive")
    get_plugin_manager()
    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "recipe.resolved.yaml").is_file():
            print(f"candidate_failures: no trained run at {run_dir}", file=sys.stderr)
            return 2
    runs = [diagnose_run(Path(r), args.k, args.n, args.seed, args.batch_size, log) for r in args.run_dirs]
    command = "python benchmarks/candidate_failures.py " + " ".join(sys.argv[1:] if argv is None else argv)
    where = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "machine": where, "date": time.strftime("%Y-%m-%d"), "runs": runs}
    (out / "candidate_failures.json").write_text(json.dumps(record, indent=2))
    table = f"`{command}` — {where}, {record['date']}\n\n" + markdown(runs)
    (out / "candidate_failures.md").write_text(table)
    log(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
