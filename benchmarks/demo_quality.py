"""The demo's quality bar, measured on held-out Shapes scenes with the data set's own scorers.

    python benchmarks/demo_quality.py runs/shapes_tiny [--n 200] [--candidates 8] [--json out.json]

Numbers (issue 6 bar in brackets):

* captions: share of test images whose greedy caption states every object's attributes correctly
  and mentions nothing extra (``caption_matches_scene(...)["all_correct"]``)            [≥ 90 %]
* text→image: share of test captions (used as prompts) for which the kept image shows exactly the
  prompted objects (``image_matches_scene(...)["match"]``), best of N by the run's saved reranker
  (``inference.json``, e.g. the ``TrainMatcher`` stage's matcher; ``--reranker`` overrides); also the
  first candidate alone and "any of N" (the reranking ceiling)                         [≥ 75 %, N = 8]
* VQA: exact match of the greedy answer after ``canonical_answer`` normalisation        [≥ 90 %]
  (also right/asked per question type)

The test scenes come from the recipe's data arguments with ``split: test`` (an independent random
stream: no test scene is a training scene). With the recipe's default ``held_out: []`` there is no
compositional hold-out; pass ``--compositional`` to also score the data set's compositional test
split (every scene holds a colour–shape pair never seen in training).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def test_set(pipe: Any, n: int, compositional: bool = False, seed: int | None = None):
    """The held-out split built from the run's recipe ``data`` arguments."""
    from vilgkit.data.shapes import ShapesDataset

    args = dict((pipe_recipe(pipe).get("data") or {}).get("init_args") or {})
    args.update(split="test", size=n)
    if seed is not None:
        args["seed"] = seed
    if compositional:
        args.pop("held_out", None)  # the data set's default compositional hold-out
    args.pop("cache_mb", None)
    return ShapesDataset(**{k: v for k, v in args.items() if k != "data"})


#: Sampling/decoding settings read from the recipe's ``Evaluate`` stage (so this script scores the
#: model the way the run's own report does); command-line flags override them.
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "cfg_scale", "caption_method", "num_beams")


def recipe_sampling(pipe: Any) -> dict[str, Any]:
    """The ``Evaluate`` stage's sampling and caption-decoding arguments from the run's recipe."""
    for stage in pipe_recipe(pipe).get("stages") or []:
        if str(stage.get("class_path", "")).split(".")[-1] == "Evaluate":
            args = stage.get("init_args") or {}
            return {k: args[k] for k in SAMPLING_KEYS if k in args}
    return {}


def pipe_recipe(pipe: Any) -> dict[str, Any]:
    from vilgkit.artifacts import read_recipe

    return read_recipe(pipe.run_dir, versions=True)


@torch.no_grad()
def evaluate(
    pipe: Any,
    dataset: Any,
    candidates: int = 8,
    seed: int = 0,
    batch: int = 50,
    sampling: dict[str, Any] | None = None,
    reranker: str = "self",
) -> dict[str, Any]:
    """Caption accuracy, text→image prompt accuracy (first / reranked / any of N) and VQA exact match.

    ``sampling``: keys of :data:`SAMPLING_KEYS` (image sampling and caption decoding settings);
    ``reranker``: a reranker name (:mod:`vilgkit.reranker_names`).
    """
    from vilgkit.data.shapes import canonical_answer, caption_matches_scene, image_matches_scene
    from vilgkit.reranker_names import build_named_reranker

    items = [dataset[i] for i in range(len(dataset))]
    sampling = dict(sampling or {})
    caption_kw = {"method": sampling.pop("caption_method", "greedy"), "num_beams": sampling.pop("num_beams", 4)}
    out: dict[str, Any] = {
        "n": len(items),
        "candidates": candidates,
        "seed": seed,
        "sampling": {**sampling, "caption_method": caption_kw["method"]},
        "reranker": reranker,
    }
    picker = build_named_reranker(reranker)
    pipe.check_reranker(picker)
    t0 = time.perf_counter()
    caps, answers = [], []
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        images = [it["image"] for it in chunk]
        caps += pipe.image_to_text(images, **caption_kw)
        answers += pipe.answer(images, [it["question"] for it in chunk])
    out["caption_all_correct"] = sum(
        caption_matches_scene(c, it["scene"])["all_correct"] for c, it in zip(caps, items)
    ) / len(items)
    right = [canonical_answer(a) == canonical_answer(it["answer"]) for a, it in zip(answers, items)]
    out["vqa_exact_match"] = sum(right) / len(items)
    by_type: dict[str, list[int]] = {}
    for ok, it in zip(right, items):
        right_total = by_type.setdefault(it["question_type"], [0, 0])
        right_total[0] += ok
        right_total[1] += 1
    out["vqa_by_type"] = {t: f"{r}/{n}" for t, (r, n) in sorted(by_type.items())}
    out["seconds_caption_vqa"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = best = anyof = 0
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        codes, ids, mask = pipe.sample_codes([it["caption"] for it in chunk], candidates, seed=seed + s, **sampling)
        order = (
            pipe.rerank(codes, ids, mask, candidates, picker, [it["caption"] for it in chunk])
            if candidates > 1 and picker is not None
            else torch.zeros(len(chunk), 1, dtype=torch.long)
        )
        images = pipe.decode_codes(
            codes, ids.repeat_interleave(candidates, 0), mask.repeat_interleave(candidates, 0)
        ).cpu()
        for b, it in enumerate(chunk):
            ok = [image_matches_scene(images[b * candidates + j], it["scene"])["match"] for j in range(candidates)]
            first += ok[0]
            best += ok[int(order[b, 0])]
            anyof += any(ok)
    n = len(items)
    out.update(t2i_first=first / n, t2i_reranked=best / n, t2i_any=anyof / n)
    out["seconds_t2i"] = time.perf_counter() - t0
    out["examples"] = [
        {
            "caption_true": it["caption"],
            "caption_generated": c,
            "question": it["question"],
            "answer_true": it["answer"],
            "answer_generated": a,
        }
        for it, c, a in list(zip(items, caps, answers))[:5]
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--stage", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compositional", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--cfg-scale", type=float, default=None)
    parser.add_argument("--caption-method", choices=["greedy", "beam"], default=None)
    parser.add_argument("--reranker", default=None, help="default: the run's saved reranker (inference.json)")
    args = parser.parse_args()
    from vilgkit import Pipeline

    pipe = Pipeline.from_run_dir(args.run_dir, stage=args.stage)
    sampling = recipe_sampling(pipe)
    sampling.update({k: v for k, v in vars(args).items() if k in SAMPLING_KEYS and v is not None})
    reranker = args.reranker or pipe.settings.reranker
    if reranker == "none" and not pipe.settings.saved:
        reranker = "self"  # a run evaluated before it saved its settings: the default of the time
    results = {
        "held_out": evaluate(
            pipe, test_set(pipe, args.n), args.candidates, args.seed, sampling=sampling, reranker=reranker
        )
    }
    if args.compositional:
        results["compositional"] = evaluate(
            pipe,
            test_set(pipe, args.n, compositional=True),
            args.candidates,
            args.seed,
            sampling=sampling,
            reranker=reranker,
        )
    for name, r in results.items():
        print(
            f"[{name}] n={r['n']}  captions all-correct {r['caption_all_correct']:.1%}  "
            f"VQA EM {r['vqa_exact_match']:.1%}  "
            f"t2i exact objects: first {r['t2i_first']:.1%}, "
            f"best-of-{r['candidates']} by {r['reranker']} {r['t2i_reranked']:.1%}, "
            f"any {r['t2i_any']:.1%}  ({r['seconds_caption_vqa']:.0f}s + {r['seconds_t2i']:.0f}s)  {r['sampling']}\n"
            f"  VQA right/asked by question type: {r['vqa_by_type']}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
