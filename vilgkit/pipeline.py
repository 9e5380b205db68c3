"""``vilgkit.Pipeline``: the trained model as a Python API (text → image, image → text, VQA).

Load it from a run directory — the resolved recipe rebuilds the components, the generator stage's
``generator.json`` says where the tokenizers came from::

    from vilgkit import Pipeline
    pipe = Pipeline.from_run_dir("runs/shapes_tiny")
    images = pipe.text_to_image(["a large red circle in the centre"], num_candidates=8, reranker="self", seed=0)
    captions = pipe.image_to_text(images)
    answers = pipe.answer(images, ["what colour is the circle?"])

Defaults: the sampling and decoding settings the run was evaluated with (``RUN_DIR/inference.json``,
written by its ``Evaluate`` stage; :attr:`Pipeline.settings`). A keyword left at ``None`` takes the
run's value; pass a value to override it (``top_k=0`` / ``top_p=1.0`` turn the filter off,
``reranker="none"`` keeps the first candidate).

Bad input gets an :class:`~vilgkit.errors.InputError` before the model runs: an empty prompt, a
prompt longer than the text budget (unless ``truncate=True``: then the first ``max_text_len - 2``
tokens are kept), an unreadable image file. Images of another size are centre-cropped to a square
and resized to the model's image size.

Shapes (dimension key): B prompts/images, N candidates per prompt, L text length, h/w code grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vilgkit.errors import InputError
from vilgkit.inference_settings import InferenceSettings, load_inference_settings
from vilgkit.interfaces import Generator, ImageTokenizer, Reconstructor, TextTokenizer
from vilgkit.interfaces.reranker import Reranker, RerankInputs
from vilgkit.pictures import load_images, to_pil
from vilgkit.self_rerank import self_rerank_scores
from vilgkit.text_encoding import encode_texts, warn_unknown_words

#: Most decoding rows (prompts x candidates) sampled together by :meth:`Pipeline.sample_codes`.
MAX_SAMPLING_ROWS = 256

#: Images decoded together by :meth:`Pipeline.decode_codes`. A decoder's activations grow with the
#: batch (800 demo candidates: 420 MB per feature map), and past the CPU caches each layer streams
#: them through memory: in chunks of 32 the demo's 800 candidates decode 2.5–4× faster, bit-identically
#: (docs/performance.md, "Reranking cost").
DECODE_BATCH = 32


class Pipeline:
    """Inference on a trained generator with its tokenizers.

    Args:
        generator: the trained unified transformer.
        text_tokenizer: the fitted text tokenizer it was trained with.
        image_tokenizer: the trained image tokenizer (codes ⇄ pixels).
        grid: the code grid ``(h, w)`` the generator was trained on.
        reconstructor: optional; an end-to-end reconstructor decodes from the generator's hidden
            states, otherwise images are decoded with ``image_tokenizer.decode``.
        device: where to run (``"auto"``: CUDA if available).
        settings: the inference defaults (:meth:`from_run_dir` reads the run's saved ones).
    """

    def __init__(
        self,
        generator: Generator,
        text_tokenizer: TextTokenizer,
        image_tokenizer: ImageTokenizer,
        grid: tuple[int, int],
        reconstructor: Reconstructor | None = None,
        device: str | torch.device = "auto",
        settings: InferenceSettings | None = None,
        matcher: torch.nn.Module | None = None,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer.to(self.device).eval()
        self.reconstructor = reconstructor.to(self.device).eval() if reconstructor is not None else None
        #: the run's image–text matching model (a ``TrainMatcher`` stage), for ``MatcherReranker``
        self.matcher = matcher.to(self.device).eval() if matcher is not None else None
        self.grid = (int(grid[0]), int(grid[1]))
        self.image_size = self.grid[0] * image_tokenizer.downsample
        self.max_text_len = int(generator.max_text_len)
        self.run_dir: Path | None = None
        self.settings = settings or InferenceSettings()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, stage: str | None = None, device: str = "auto") -> Pipeline:
        """Rebuild the pipeline from a finished run.

        Args:
            run_dir: the run directory (holds ``recipe.resolved.yaml`` and the stage folders).
            stage: the generator stage to load (default: the last stage of the recipe that saved a
                generator, e.g. ``finetune_vqa`` after ``train_generator``).
            device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        """
        from vilgkit.artifacts import load_run
        from vilgkit.stages.train_generator import check_special_ids

        run = load_run(run_dir, stage)  # every file verified against the run's manifest
        check_special_ids(run.generator, run.text_tokenizer)  # the tokenizer's ids, as in training
        pipe = cls(
            run.generator,
            run.text_tokenizer,
            run.image_tokenizer,
            run.grid,
            run.reconstructor,
            device,
            matcher=run.matcher,
        )
        pipe.run_dir = run.run_dir
        pipe.settings = load_inference_settings(run.run_dir)
        pipe.stage_dir = run.stage_dir
        return pipe

    # ------------------------------------------------------------------ text → image

    @torch.no_grad()
    def sample_codes(
        self,
        prompts: Sequence[str],
        num_candidates: int = 1,
        *,
        seed: int | None = 0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        truncate: bool = False,
        batch_size: int = 16,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample codes for every prompt: ``codes Long[B*N, h, w]`` (candidate-major per prompt),
        plus the prompts' ``ids``/``mask`` (``[B, L]``).

        Up to ``batch_size`` prompts and all their candidates go through the KV cache as one batch,
        capped at :data:`MAX_SAMPLING_ROWS` rows (best-of-60 samples 4 prompts at a time), which
        bounds the cache's memory; one prompt's candidates are never split.
        """
        if num_candidates < 1:
            raise InputError(f"num_candidates must be at least 1, got {num_candidates}")
        ids, mask, _ = encode_texts(self.text_tokenizer, prompts, self.max_text_len, truncate=truncate)
        rng = torch.Generator(device=self.device)
        rng.manual_seed(0 if seed is None else int(seed))
        chunks = []
        per_batch = max(1, min(batch_size, MAX_SAMPLING_ROWS // num_candidates))
        for start in range(0, len(ids), per_batch):
            chunk_ids = ids[start : start + per_batch].to(self.device)
            chunk_mask = mask[start : start + per_batch].to(self.device)
            chunks.append(
                self.generator.sample_images(
                    chunk_ids,
                    chunk_mask,
                    grid=self.grid,
                    num_candidates=num_candidates,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    cfg_scale=cfg_scale,
                    generator=rng,
                )
            )
        return torch.cat(chunks), ids, mask

    @torch.no_grad()
    def decode_codes(
        self, codes: torch.Tensor, text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Codes ``[B, h, w]`` → images ``[B, 3, H, W]`` in [-1, 1] (end-to-end reconstructors use the
        generator's hidden states for the prompts ``text_ids``), decoded :data:`DECODE_BATCH` at a time."""
        codes = codes.to(self.device)
        chunks = []
        for start in range(0, max(codes.shape[0], 1), DECODE_BATCH):  # one (empty) pass for no codes
            rows = slice(start, start + DECODE_BATCH)
            if self.reconstructor is not None and self.reconstructor.end_to_end:
                mask = None if text_mask is None else text_mask[rows].to(self.device)
                hidden = self.generator.image_hidden_states(text_ids[rows].to(self.device), mask, codes[rows])
                chunks.append(self.reconstructor.reconstruct(codes[rows], hidden).float())
            elif self.reconstructor is not None:
                chunks.append(self.reconstructor.reconstruct(codes[rows]).float())
            else:
                chunks.append(self.image_tokenizer.decode(codes[rows]).float())
        return torch.cat(chunks)

    def rerank(
        self,
        codes: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        num_candidates: int,
        reranker: Any,
        prompts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Candidates of each prompt sorted best first, ``Long[B, N]``.

        ``reranker`` is ``"self"`` (``log P(prompt | candidate)`` from this generator, batched over all
        candidates) or a :class:`~vilgkit.interfaces.Reranker`.
        """
        if reranker == "self":
            scores = self_rerank_scores(self.generator, codes.to(self.device), ids, mask, num_candidates).cpu()
            return torch.argsort(scores, dim=1, descending=True, stable=True)
        images = (
            self.decode_codes(
                codes, ids.repeat_interleave(num_candidates, 0), mask.repeat_interleave(num_candidates, 0)
            )
            if reranker.needs_images
            else None
        )
        inputs = RerankInputs(
            num_candidates=num_candidates,
            codes=codes.to(self.device),
            text_ids=ids.to(self.device),
            text_mask=mask.to(self.device),
            prompts=list(prompts or []),
            images=images,
            generator=self.generator,
            matcher=self.matcher,
        )
        return reranker.rerank(inputs).order

    def text_to_image(
        self,
        prompts: Sequence[str],
        num_candidates: int | None = None,
        reranker: Any = None,
        seed: int | None = 0,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float | None = None,
        truncate: bool = False,
        return_all: bool = False,
    ) -> list[Image.Image] | list[list[Image.Image]]:
        """Generate one image per prompt (the best of ``num_candidates``).

        Every setting left at ``None`` is the run's saved one (:attr:`settings`).

        Args:
            prompts: the texts.
            num_candidates: candidates sampled per prompt (in one batch through the KV cache).
            reranker: how to pick the best candidate: ``"none"`` (the first), ``"self"`` (highest
                ``log P(prompt | image)`` from the same generator), ``"self_mean"``, ``"pmi"``,
                ``"caption"`` (docs/evaluation.md, "Reranking"), a registered reranker's name
                (``RERANKERS``) or a :class:`~vilgkit.interfaces.Reranker`.
            seed: sampling seed (the same seed gives the same images).
            temperature, top_k, top_p, cfg_scale: sampling settings (``top_k=0``, ``top_p=1.0``: off).
            truncate: cut over-long prompts instead of raising.
            return_all: return every candidate per prompt, best first.
        """
        num_candidates = self._setting("num_candidates", num_candidates)
        reranker = self._resolve_reranker(self._setting("reranker", reranker))
        warn_unknown_words(self.text_tokenizer, prompts, "prompt")
        codes, ids, mask = self.sample_codes(
            prompts,
            num_candidates,
            seed=seed,
            temperature=self._setting("temperature", temperature),
            top_k=_off_if(0, self._setting("top_k", top_k)),
            top_p=_off_if(1.0, self._setting("top_p", top_p)),
            cfg_scale=self._setting("cfg_scale", cfg_scale),
            truncate=truncate,
        )
        order = torch.arange(num_candidates).expand(len(ids), num_candidates)
        if reranker is not None and num_candidates > 1:
            order = self.rerank(codes, ids, mask, num_candidates, reranker, prompts)
        flat = (order + torch.arange(len(ids))[:, None] * num_candidates).flatten()
        picked = (
            codes[flat.to(codes.device)]
            if return_all
            else codes[(order[:, 0] + torch.arange(len(ids)) * num_candidates).to(codes.device)]
        )
        rep = num_candidates if return_all else 1
        images = to_pil(self.decode_codes(picked, ids.repeat_interleave(rep, 0), mask.repeat_interleave(rep, 0)).cpu())
        if return_all:
            return [images[i * num_candidates : (i + 1) * num_candidates] for i in range(len(ids))]
        return images

    def check_reranker(self, reranker: Any) -> None:
        """Raise :class:`InputError` when ``reranker`` needs a part this pipeline lacks (the
        matcher of a ``TrainMatcher`` stage, or one that reads what the reranker hands it),
        before any candidate is sampled."""
        if getattr(reranker, "needs_matcher", False) and self.matcher is None:
            where = self.run_dir if self.run_dir is not None else "this pipeline"
            raise InputError(
                f"reranker {type(reranker).__name__} needs the run's image–text matcher, and {where} has none: "
                "add a TrainMatcher stage to the recipe (or choose another --reranker)"
            )
        reads, found = getattr(reranker, "reads", None), getattr(self.matcher, "image_input", None)
        if reads is not None and found is not None and reads != found:
            from vilgkit.reranker_names import MATCHER_RERANKER_FOR

            raise InputError(
                f"reranker {type(reranker).__name__} scores {reads}, and the run's matcher reads {found}: "
                f"use --reranker {MATCHER_RERANKER_FOR[found]}"
            )

    def _resolve_reranker(self, reranker: Any) -> Any:
        """``None`` / a name (:mod:`vilgkit.reranker_names`) / a Reranker → ``None``, ``"self"`` or a Reranker."""
        if reranker is None or isinstance(reranker, Reranker):
            self.check_reranker(reranker)
            return reranker
        if isinstance(reranker, str):
            from vilgkit.errors import VilgkitError
            from vilgkit.reranker_names import build_named_reranker, reranker_class_name

            try:
                cls_name = reranker_class_name(reranker)
            except VilgkitError as err:
                raise InputError(str(err)) from None
            if cls_name is None or cls_name == "SelfReranker":
                return "self" if cls_name else None  # "self": the batched fast path
            try:
                built = build_named_reranker(reranker)
            except (TypeError, ValueError, ImportError) as err:  # one that needs settings (ClipReranker's weights)
                raise InputError(
                    f"reranker {reranker!r} cannot be built from its name alone ({err}); use a short name "
                    "(self, self_mean, pmi, caption, none) here, or pass a configured Reranker object from Python"
                ) from None
            self.check_reranker(built)
            return built
        raise InputError(f"reranker must be None, 'self', a reranker name or a Reranker, got {type(reranker).__name__}")

    # ------------------------------------------------------------------ image → text

    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Images (paths, PIL, arrays, tensors) → codes ``[B, h, w]``."""
        pixels = load_images(images, self.image_size).to(self.device)
        with torch.no_grad():
            return self.image_tokenizer.encode(pixels)

    @torch.no_grad()
    def image_to_text(
        self,
        images: Sequence[Any],
        *,
        method: str | None = None,
        num_beams: int | None = None,
        max_length: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = 0,
    ) -> list[str]:
        """Caption each image (greedy, beam search or sampling; at most ``max_length`` tokens).

        ``method``, ``num_beams`` and ``max_length`` left at ``None`` are the run's saved settings.
        """
        codes = self.encode_images(images)
        out = self.generator.generate_text(
            codes,
            max_length=self._max_length(self._setting("max_text_length", max_length)),
            method=self._setting("caption_method", method),
            num_beams=self._setting("num_beams", num_beams),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=self._rng(seed),
        )
        return self.decode_text(out)

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[Any],
        questions: Sequence[str],
        *,
        method: str | None = None,
        num_beams: int | None = None,
        max_length: int | None = None,
        truncate: bool = False,
    ) -> list[str]:
        """Answer one question per image (a single image is shared by all questions).

        ``method``, ``num_beams`` and ``max_length`` left at ``None`` are the run's saved settings.
        """
        if isinstance(questions, str):
            raise InputError("expected a list of questions, got a single string; wrap it in a list")
        images = list(images)
        if len(images) == 1 and len(questions) > 1:
            images = images * len(questions)
        if len(images) != len(questions):
            raise InputError(f"got {len(images)} images but {len(questions)} questions; give one question per image")
        codes = self.encode_images(images)
        warn_unknown_words(self.text_tokenizer, questions, "question")
        q_ids, q_mask, _ = encode_texts(
            self.text_tokenizer, questions, self.max_text_len, truncate=truncate, what="question"
        )
        out = self.generator.generate_text(
            codes,
            max_length=self._max_length(self._setting("max_text_length", max_length)),
            method=self._setting("answer_method", method),
            num_beams=self._setting("num_beams", num_beams),
            question_ids=q_ids.to(self.device),
            question_mask=q_mask.to(self.device),
        )
        return self.decode_text(out)

    def decode_text(self, ids: list[list[int]]) -> list[str]:
        """Generated id lists → strings.

        The generator's text vocabulary is the tokenizer's *maximum* size (a recipe value), the
        fitted vocabulary may be smaller; ids past it never occur in training targets, so a trained
        model all but never emits them — any that appear are dropped rather than failing decoding.
        """
        size = self.text_tokenizer.vocab_size
        return self.text_tokenizer.decode([[i for i in row if i < size] for row in ids])

    def _setting(self, name: str, value: Any) -> Any:
        """An argument's value, or the run's saved setting when it was left at ``None``."""
        return getattr(self.settings, name) if value is None else value

    def _max_length(self, max_length: int | None) -> int:
        limit = self.max_text_len
        if max_length is None:
            return limit
        if not 1 <= max_length <= limit:
            raise InputError(f"max_length must be between 1 and the text budget {limit}, got {max_length}")
        return int(max_length)

    def _rng(self, seed: int | None) -> torch.Generator | None:
        return None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))


def _off_if(off: float, value: Any) -> Any:
    """``top_k=0`` / ``top_p=1.0`` switch the filter off (``None`` already means "the run's value")."""
    return None if value is None or value == off else value
