"""The model work behind ``vilgkit serve``: one batched call per group of compatible requests.

Runs on the batching queue's worker thread (:mod:`vilgkit.serve.batching`), through the
:class:`vilgkit.Pipeline` public methods:

* ``generate``: the prompts of a group share their sampling settings and seed, so they are sampled
  together (``Pipeline.sample_codes``: one KV-cached batch of ``B × N`` candidates), decoded, and
  reranked; every candidate comes back best first with its score, as a PNG data URL;
* ``caption`` / ``vqa``: the images (and questions) of a group are decoded in one batch.

A prompt's images depend on its seed *and* on the prompts batched with it (they share one random
stream), so the same request repeated alone gives the same images.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import torch

from vilgkit.interfaces.reranker import rerank_samples
from vilgkit.serve.batching import Job
from vilgkit.serve.limits import RequestError


def png_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def build_reranker(name: str) -> Any:
    """``none`` → None; a short name (``self``, ``pmi``, ...) or a registered reranker's name → an
    instance; else 422."""
    from vilgkit.errors import VilgkitError
    from vilgkit.reranker_names import build_named_reranker, known_names, reranker_class_name

    try:
        cls_name = reranker_class_name(name)
    except VilgkitError:
        raise RequestError(422, f"reranker: {name!r}; allowed: {', '.join(known_names())}") from None
    if cls_name == "ClipReranker":  # its weights are a file the server was not given
        raise RequestError(
            422,
            "reranker: 'ClipReranker' needs CLIP weights, which this server does not load",
        )
    return None if cls_name is None else build_named_reranker(name)


class ModelRunner:
    """``runner(kind, jobs)`` for :class:`~vilgkit.serve.batching.BatchQueue` over a loaded pipeline."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self._rerankers: dict[str, Any] = {}

    def __call__(self, kind: str, jobs: list[Job]) -> None:
        with torch.inference_mode():
            {"generate": self.generate, "caption": self.caption, "vqa": self.vqa}[kind](jobs)

    def reranker(self, name: str) -> Any:
        if name not in self._rerankers:
            self._rerankers[name] = build_reranker(name)
        return self._rerankers[name]

    def generate(self, jobs: list[Job]) -> None:
        pipe, settings = self.pipe, jobs[0].payload["settings"]
        prompts = [job.payload["prompt"] for job in jobs]
        n = settings["num_candidates"]
        for job in jobs:
            job.advance("sampling", 0.1)
        codes, ids, mask = pipe.sample_codes(
            prompts,
            n,
            seed=settings["seed"],
            temperature=settings["temperature"],
            top_k=settings["top_k"],
            top_p=settings["top_p"],
            cfg_scale=settings["cfg_scale"],
        )
        for job in jobs:
            job.advance("decoding", 0.7)
        rep_ids, rep_mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        pixels = pipe.decode_codes(codes, rep_ids, rep_mask)
        scores = order = None
        reranker = self.reranker(settings["reranker"])
        if reranker is not None and n > 1:
            for job in jobs:
                job.advance("reranking", 0.85)
            result = rerank_samples(reranker, n, codes, ids, mask, prompts, pixels, pipe.generator, pipe.matcher)
            scores, order = result.scores.float().cpu(), result.order.cpu()
        from vilgkit.pictures import to_pil

        images = to_pil(pixels.cpu())
        for b, job in enumerate(jobs):
            ranking = order[b].tolist() if order is not None else list(range(n))
            candidates = [
                {
                    "rank": rank,
                    "index": j,
                    "score": None if scores is None else float(scores[b, j]),
                    "image": png_data_url(images[b * n + j]),
                }
                for rank, j in enumerate(ranking)
            ]
            job.finish({"prompt": prompts[b], "settings": settings, "candidates": candidates})

    def caption(self, jobs: list[Job]) -> None:
        def decode(images: list, method: str, num_beams: int) -> list[str]:
            return self.pipe.image_to_text(images, method=method, num_beams=num_beams, seed=0)

        self._image_to_text(jobs, "captioning", decode, lambda job, caption: {"caption": caption})

    def vqa(self, jobs: list[Job]) -> None:
        questions = [job.payload["question"] for job in jobs]

        def decode(images: list, method: str, num_beams: int) -> list[str]:
            return self.pipe.answer(images, questions, method=method, num_beams=num_beams)

        self._image_to_text(
            jobs, "answering", decode, lambda job, answer: {"question": job.payload["question"], "answer": answer}
        )

    @staticmethod
    def _image_to_text(
        jobs: list[Job], stage: str, decode: Callable[..., list[str]], result: Callable[[Job, str], dict[str, Any]]
    ) -> None:
        """Image → text jobs of one batch (they share their settings): one ``decode`` call for every
        image, then each job finished with ``result(job, text)`` and the settings."""
        settings = jobs[0].payload["settings"]
        for job in jobs:
            job.advance(stage, 0.2)
        texts = decode([job.payload["image"] for job in jobs], settings["method"], settings["num_beams"])
        for job, text in zip(jobs, texts):
            job.finish({**result(job, text), "settings": settings})
