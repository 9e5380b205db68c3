"""One evaluation harness for both directions: sample, rerank, caption, answer, score, record.

Used by the ``Evaluate`` recipe stage and by ``vilgkit eval``. For every batch of the evaluation
data it runs what the selected metrics need:

* text→image: ``N`` candidates per prompt in one KV-cached batch (``Pipeline.sample_codes``), the
  reranker picks one (its cost is timed separately), the pick is decoded and scored; how different
  the candidates are is measured too (``candidate_distinct_share``, ``candidate_code_difference``:
  :mod:`vilgkit.metrics.diversity`);
* image→text: the real image is tokenized and captioned;
* VQA: the real image and its question are answered.

The record (``eval.json``) holds the numbers, the exact sampling settings and seeds, the reranker,
the checkpoint (path + SHA-256) and the data, so a result can be reproduced; ``report.html`` shows
picture grids next to the numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vilgkit.inference_settings import InferenceSettings
from vilgkit.interfaces.reranker import Reranker, rerank_samples
from vilgkit.metrics.base import Metric
from vilgkit.metrics.caption import CaptionMetrics

RESULTS_FILE = "eval.json"
REPORT_FILE = "report.html"


#: the :class:`~vilgkit.inference_settings.InferenceSettings` fields the harness generates with
SAMPLING_FIELDS = (
    "num_candidates",
    "temperature",
    "top_k",
    "top_p",
    "cfg_scale",
    "caption_method",
    "num_beams",
    "max_text_length",
)

_SAMPLING_DOC = """How images, captions and answers are generated (all recorded in ``eval.json``).

    Attributes (names, types and defaults of :class:`~vilgkit.inference_settings.InferenceSettings`):
        num_candidates: images sampled per prompt (best of N after reranking).
        temperature, top_k, top_p, cfg_scale: image-token sampling.
        caption_method: ``greedy``, ``beam`` or ``sample`` for captions (answers are greedy).
        num_beams: beams for ``beam``.
        max_text_length: caption/answer token budget (default: the generator's text budget).
    """

# Built from InferenceSettings' fields rather than written out a second time: the Evaluate stage
# saves its sampling settings as the run's inference settings, so each must have the same name,
# type and default there (and the order is that class's, as eval.json records them).
SamplingSettings = dataclasses.make_dataclass(
    "SamplingSettings",
    [
        (f.name, f.type, dataclasses.field(default=f.default))
        for f in dataclasses.fields(InferenceSettings)
        if f.name in SAMPLING_FIELDS
    ],
    namespace={"__doc__": _SAMPLING_DOC, "__module__": __name__},  # pickles as this module's class
)


def build_metrics(keys: list[str], *, fid_extractor: str = "shapes", fid_weights: str | None = None) -> list[Metric]:
    """Metric objects for ``--metrics`` names (``fid``, ``caption``, ``vqa``, ``shapes``)."""
    from vilgkit.metrics import FID, METRIC_KEYS

    unknown = [k for k in keys if k not in METRIC_KEYS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRIC_KEYS)}")
    out: list[Metric] = []
    for key in dict.fromkeys(keys):
        for cls in METRIC_KEYS[key]:
            if cls is FID:
                out.append(FID(extractor=fid_extractor, weights=fid_weights))
            elif cls is not CaptionMetrics:  # caption metrics are built per language (see below)
                out.append(cls())
    return out


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Path, size and SHA-256 of a checkpoint file."""
    from vilgkit.artifacts import file_record

    record = file_record(path)
    return {"path": str(path), "bytes": record["bytes"], "sha256": record["sha256"]}


def reranker_record(reranker: Reranker | None) -> dict[str, Any] | None:
    if reranker is None:
        return None
    args = {k: v for k, v in vars(reranker).items() if not k.startswith("_")}
    return {"class": f"{type(reranker).__module__}.{type(reranker).__qualname__}", "init_args": args}


class _Examples:
    """The first few samples of each task, kept for the report."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.text2image: list[dict[str, Any]] = []
        self.image2text: list[dict[str, Any]] = []
        self.vqa: list[dict[str, Any]] = []


def evaluate(
    pipe: Any,
    dataset: Any,
    *,
    metrics: list[str],
    out_dir: str | Path,
    num_samples: int = 100,
    batch_size: int = 16,
    sampling: SamplingSettings | None = None,
    reranker: Reranker | None = None,
    seed: int = 0,
    fid_extractor: str = "shapes",
    fid_weights: str | None = None,
    report_examples: int = 8,
    extra_record: dict[str, Any] | None = None,
    log=print,
) -> dict[str, Any]:
    """Evaluate a :class:`vilgkit.Pipeline` on a data set; writes ``eval.json`` and ``report.html``.

    Args:
        pipe: the loaded pipeline (generator, tokenizers, decoder).
        dataset: map-style data with ``image``, ``caption`` (+ ``references``, ``question``,
            ``answer``, ``scene``, ``lang`` where the metrics need them), e.g. ``ShapesDataset``.
        metrics: ``fid``, ``caption``, ``vqa``, ``shapes`` (any subset).
        out_dir: where ``eval.json`` and ``report.html`` go.
        num_samples: evaluate the first ``num_samples`` items.
        batch_size: prompts / images per generation batch.
        sampling: generation settings (:class:`SamplingSettings`).
        reranker: picks the best of ``num_candidates`` (None: the first candidate).
        seed: base seed; batch ``i`` samples with seed ``seed + i``.
        fid_extractor, fid_weights: FID feature space (see :func:`vilgkit.metrics.build_feature_extractor`).
        report_examples: samples per task shown in the report.
        extra_record: merged into the record (e.g. the checkpoint and data description).
        log: progress printer.

    Returns:
        The record written to ``eval.json``.
    """
    from vilgkit.data import collate

    sampling = sampling or SamplingSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if num_samples <= 0:
        raise ValueError("nothing to evaluate: num_samples is 0")
    pipe.check_reranker(reranker)  # a reranker that needs a part the run lacks fails before any sampling
    metric_objs = build_metrics(metrics, fid_extractor=fid_extractor, fid_weights=fid_weights)
    tasks = {m.task for m in metric_objs} | ({"image2text"} if "caption" in metrics else set())
    captioners: dict[str, CaptionMetrics] = {}
    examples = _Examples(report_examples)
    from vilgkit.metrics.diversity import CandidateDiversity

    diversity = CandidateDiversity(sampling.num_candidates)
    timing = {"generation_s": 0.0, "rerank_s": 0.0, "decode_s": 0.0, "caption_s": 0.0, "vqa_s": 0.0, "scoring_s": 0.0}
    start_all = time.perf_counter()
    num_batches = -(-num_samples // batch_size)  # at most; a shorter data set ends sooner
    seen = 0
    for b, samples in enumerate(_batches(dataset, num_samples, batch_size)):  # streamed: constant memory
        seen += len(samples)
        batch = collate(samples)
        fields: dict[str, dict[str, Any]] = {}
        if "text2image" in tasks:
            fields["text2image"] = _text_to_image(
                pipe, batch, sampling, reranker, seed + b, timing, examples, diversity
            )
        if "image2text" in tasks:
            fields["image2text"] = _image_to_text(pipe, batch, sampling, seed + b, timing, examples)
            if "caption" in metrics:
                for pred, refs, lang in zip(
                    fields["image2text"]["predictions"],
                    fields["image2text"]["references"],
                    batch.get("lang") or ["en"] * len(batch["caption"]),
                ):
                    captioners.setdefault(lang, CaptionMetrics(mode="char" if lang == "zh" else "word"))
                    captioners[lang].update([pred], [refs])
        if "vqa" in tasks:
            fields["vqa"] = _answer(pipe, batch, sampling, timing, examples)
        t = time.perf_counter()
        for metric in metric_objs:
            metric.update(**{k: fields[metric.task][k] for k in metric.inputs})
        timing["scoring_s"] += time.perf_counter() - t
        log(f"evaluate: batch {b + 1}/{num_batches}")
    if seen == 0:
        raise ValueError("nothing to evaluate: the data set is empty")
    num_samples = seen
    results: dict[str, float] = {}
    metric_settings: dict[str, Any] = {}
    for metric in metric_objs:
        results.update(metric.compute())
        metric_settings[type(metric).__name__] = metric.settings()
    if "text2image" in tasks:  # the best of N had candidates that differ (or not): issue 26
        div = diversity.compute()
        results["candidate_distinct_share"] = div["distinct_share"]
        results["candidate_code_difference"] = div["mean_code_difference"]
    for lang, captioner in captioners.items():
        results.update({f"{k}_{lang}": v for k, v in captioner.compute().items()})
        metric_settings[f"CaptionMetrics[{lang}]"] = captioner.settings()
    _mark_examples(examples, metric_objs)
    if timing["generation_s"] > 0:
        timing["rerank_fraction_of_generation"] = timing["rerank_s"] / timing["generation_s"]
    timing["total_s"] = time.perf_counter() - start_all
    record = {
        "metrics": results,
        "sampling": dataclasses.asdict(sampling),
        "seed": {
            "base": seed,
            "rule": "batch i samples with torch.Generator seeded seed + i",
            "batch_size": batch_size,
        },
        "reranker": reranker_record(reranker),
        "num_samples": num_samples,
        "metric_settings": metric_settings,
        "timing": timing,
        "device": str(getattr(pipe, "device", "cpu")),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        **(extra_record or {}),
    }
    from vilgkit import artifacts

    artifacts.write_json(out_dir / RESULTS_FILE, record)
    from vilgkit.report import write_report

    write_report(out_dir / REPORT_FILE, record, examples)
    log(f"evaluate: wrote {out_dir / RESULTS_FILE} and {out_dir / REPORT_FILE}")
    return record


def _batches(dataset: Any, num_samples: int, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """The first ``num_samples`` samples in lists of ``batch_size``: indexed for a map-style data set,
    read once from the start for a stream (a repeating stream is cut at ``num_samples``)."""
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset):
        items = itertools.islice(iter(dataset), num_samples)
    else:
        items = (dataset[i] for i in range(min(num_samples, len(dataset))))
    while chunk := list(itertools.islice(items, batch_size)):
        yield chunk


def _decode(pipe: Any, ids: Any) -> list[str]:
    """Generated ids → texts as inference decodes them (``Pipeline.decode_text`` drops ids past the
    tokenizer's vocabulary, which a generator with a larger text vocabulary can emit)."""
    decode = getattr(pipe, "decode_text", None)
    return decode(ids) if callable(decode) else pipe.text_tokenizer.decode(ids)


def _text_to_image(
    pipe, batch, sampling: SamplingSettings, reranker, seed: int, timing, examples, diversity
) -> dict[str, Any]:
    prompts = list(batch["caption"])
    n = sampling.num_candidates
    t = time.perf_counter()
    codes, ids, mask = pipe.sample_codes(
        prompts,
        n,
        seed=seed,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        cfg_scale=sampling.cfg_scale,
        truncate=True,
    )
    timing["generation_s"] += time.perf_counter() - t
    diversity.update(codes)
    scores = None
    best = torch.zeros(len(prompts), dtype=torch.long)
    all_images = None
    need_all = reranker is not None and reranker.needs_images
    if need_all or len(examples.text2image) < examples.limit:
        t = time.perf_counter()
        all_images = pipe.decode_codes(codes, ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)).cpu()
        timing["decode_s" if not need_all else "rerank_s"] += time.perf_counter() - t
    if reranker is not None and n > 1:
        result = rerank_samples(reranker, n, codes, ids, mask, prompts, all_images, pipe.generator, pipe.matcher)
        timing["rerank_s"] += result.seconds
        best, scores = result.best, result.scores
    rows = torch.arange(len(prompts)) * n + best
    t = time.perf_counter()
    if all_images is not None:
        images = all_images[rows]
    else:
        images = pipe.decode_codes(codes[rows.to(codes.device)], ids, mask).cpu()
    timing["decode_s"] += time.perf_counter() - t
    for i, prompt in enumerate(prompts):
        if len(examples.text2image) >= examples.limit or all_images is None:
            break
        examples.text2image.append(
            {
                "prompt": prompt,
                "candidates": all_images[i * n : (i + 1) * n],
                "best": int(best[i]),
                "scores": scores[i].tolist() if scores is not None else None,
            }
        )
    return {"generated": images, "real": batch["image"], "prompts": prompts, "scenes": batch.get("scene")}


def _image_to_text(pipe, batch, sampling: SamplingSettings, seed: int, timing, examples) -> dict[str, Any]:
    t = time.perf_counter()
    images = batch["image"]
    with torch.no_grad():
        codes = pipe.image_tokenizer.encode(images.to(pipe.device))
        out = pipe.generator.generate_text(
            codes,
            max_length=pipe._max_length(sampling.max_text_length),
            method=sampling.caption_method,
            num_beams=sampling.num_beams,
            generator=torch.Generator(device=pipe.device).manual_seed(seed),
        )
    captions = _decode(pipe, out)
    timing["caption_s"] += time.perf_counter() - t
    references = [list(r) for r in batch["references"]] if "references" in batch else [[c] for c in batch["caption"]]
    for i, caption in enumerate(captions):
        if len(examples.image2text) >= examples.limit:
            break
        examples.image2text.append({"image": images[i], "caption": caption, "references": references[i]})
    return {"predictions": captions, "references": references, "scenes": batch.get("scene")}


def _answer(pipe, batch, sampling: SamplingSettings, timing, examples) -> dict[str, Any]:
    from vilgkit.text_encoding import encode_texts

    t = time.perf_counter()
    images, questions = batch["image"], list(batch.get("question") or [])
    if not any(q.strip() for q in questions):
        raise ValueError("the evaluation data has no questions (caption-only data): leave `vqa` out of the metrics")
    q_ids, q_mask, _ = encode_texts(pipe.text_tokenizer, questions, pipe.max_text_len, truncate=True, what="question")
    with torch.no_grad():
        codes = pipe.image_tokenizer.encode(images.to(pipe.device))
        out = pipe.generator.generate_text(
            codes,
            max_length=pipe._max_length(sampling.max_text_length),
            method="greedy",
            question_ids=q_ids.to(pipe.device),
            question_mask=q_mask.to(pipe.device),
        )
    answers = _decode(pipe, out)
    timing["vqa_s"] += time.perf_counter() - t
    for i, answer in enumerate(answers):
        if len(examples.vqa) >= examples.limit:
            break
        examples.vqa.append(
            {"image": images[i], "question": questions[i], "answer": answer, "truth": batch["answer"][i]}
        )
    return {"predictions": answers, "answers": list(batch["answer"]), "questions": questions}


def _mark_examples(examples: _Examples, metric_objs: list[Metric]) -> None:
    """Attach per-sample verdicts (from the Shapes scorers and the VQA normalisation) to the examples."""
    from vilgkit.metrics.shapes import ShapesCaptionAccuracy, ShapesPromptAccuracy
    from vilgkit.metrics.vqa import normalize_answer

    for metric in metric_objs:
        if isinstance(metric, ShapesPromptAccuracy):
            for ex, ok in zip(examples.text2image, metric.per_sample()):
                ex["correct"] = ok
        if isinstance(metric, ShapesCaptionAccuracy):
            for ex, ok in zip(examples.image2text, metric.per_sample()):
                ex["correct"] = ok
    for ex in examples.vqa:
        ex["correct"] = normalize_answer(ex["answer"]) == normalize_answer(ex["truth"])
