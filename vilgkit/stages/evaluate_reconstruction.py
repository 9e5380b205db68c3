"""``EvaluateReconstruction``: score one generator × reconstructor pairing (one row of Table 7).

For ``source: generated`` the generator samples codes for held-out captions (KV-cached, one
candidate per prompt, no reranking: the ablation compares generators and reconstructors, not
rerankers) and the reconstructor decodes them; an end-to-end reconstructor first gets the hidden
states of one teacher-forced pass over the sampled codes (``Pipeline.decode_codes``). For
``source: gold`` the codes are the tokenizer's encoding of the real images (teacher forcing).

Written to the stage folder: ``metrics.json`` (numbers, labels, settings, timings) and
``samples.png`` (real images above their generated / reconstructed counterparts).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from vilgkit.errors import VilgkitError
from vilgkit.interfaces import Reconstructor, RunContext, Stage
from vilgkit.registry import RECONSTRUCTORS, STAGES

METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.png"


def reconstructor_label(reconstructor: Reconstructor) -> str:
    """The Table 7 row label of a reconstructor."""
    return "End-to-end R" if reconstructor.end_to_end else "Two-stage R"


def two_stage_reconstructor(*args: Any) -> Reconstructor:
    """The tokenizer's own decoder as a reconstructor (for recipes that name none), from its registry."""
    cls = RECONSTRUCTORS.get("TwoStageReconstructor")
    if cls is None:
        raise VilgkitError(
            "the recipe names no reconstructor and TwoStageReconstructor (plugin vilgkit_reconstruct) is not loaded"
        )
    return cls(*args)


@STAGES.register_module()
class EvaluateReconstruction(Stage):
    """FID (Shapes feature extractor, no downloads), Shapes prompt accuracy and, on gold codes, PSNR.

    Args:
        name: stage name and output folder (default ``evaluate_reconstruction``).
        source: ``generated`` (codes sampled from the captions) or ``gold`` (the real images' codes).
        generator_from: the generator stage (needed for ``generated`` and for end-to-end decoding).
        reconstructor: decode with this reconstructor instead of the recipe's ``reconstructor``
            (e.g. the tokenizer's decoder for an end-to-end trained generator). An end-to-end one
            loads its weights from ``generator_from``.
        text_tokenizer_from, image_tokenizer_from: stages (or folders) with the trained tokenizers
            (used when no generator is loaded).
        fid_weights: stage name or folder of the Shapes FID feature extractor (``TrainShapesFeatures``).
        data: evaluation data (default: the recipe's data class on its ``test`` split).
        num_samples: images scored (real images of the data set are the FID reference).
        batch_size: prompts / images per batch.
        temperature, top_k, top_p, cfg_scale: image sampling settings.
        seed: sampling seed (default: the run's seed).
        repeats: for ``generated``, sample this many times (seeds ``seed, seed+1, ...``) and report
            the mean and the spread of the metrics (gold decoding is deterministic: one pass).
        reference_floor: also report ``fid_real_vs_real``: the FID between the evaluation images and
            as many independent real images (the data's ``val`` split), the noise floor at this size.
        grid_images: images shown in ``samples.png``.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(
        self,
        name: str | None = None,
        source: Literal["generated", "gold"] = "generated",
        generator_from: str | None = None,
        reconstructor: Reconstructor | None = None,
        text_tokenizer_from: str = "fit_text_tokenizer",
        image_tokenizer_from: str = "train_tokenizer",
        fid_weights: str = "train_shapes_features",
        data: Dataset | None = None,
        num_samples: int = 500,
        batch_size: int = 50,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        seed: int | None = None,
        repeats: int = 1,
        reference_floor: bool = True,
        grid_images: int = 16,
        device: str = "auto",
    ) -> None:
        super().__init__(name)
        if source not in ("generated", "gold"):
            raise ValueError(f"source must be 'generated' or 'gold', got {source!r}")
        if num_samples < 2 or batch_size <= 0 or grid_images < 0 or repeats < 1:
            raise ValueError("num_samples >= 2, batch_size > 0, repeats >= 1 and grid_images >= 0 are required")
        self.source, self.generator_from, self.reconstructor = source, generator_from, reconstructor
        self.text_tokenizer_from, self.image_tokenizer_from = text_tokenizer_from, image_tokenizer_from
        self.fid_weights, self.data = fid_weights, data
        self.num_samples, self.batch_size = num_samples, batch_size
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "cfg_scale": cfg_scale}
        self.seed, self.grid_images, self.device = seed, grid_images, device
        self.repeats = repeats if source == "generated" else 1
        self.reference_floor = reference_floor

    # ------------------------------------------------------------------ set-up

    def _decoder(self, ctx: RunContext):
        """``(pipeline or None, text tokenizer, image tokenizer, reconstructor, generator label)``."""
        from vilgkit.artifacts import GENERATOR_RECORD, read_json
        from vilgkit.pipeline import Pipeline

        if self.generator_from:
            pipe = Pipeline.from_run_dir(ctx.run_dir, stage=self.generator_from, device=self.device)
            if self.reconstructor is not None:
                pipe.reconstructor = (
                    self._attach(self.reconstructor, pipe.image_tokenizer, pipe.generator.hidden_size, pipe.stage_dir)
                    .to(pipe.device)
                    .eval()
                )
            if pipe.reconstructor is None:  # the recipe names none: the tokenizer decodes (two-stage)
                pipe.reconstructor = two_stage_reconstructor(pipe.image_tokenizer)
            manifest = read_json(pipe.stage_dir / GENERATOR_RECORD)
            g_label = "End-to-end G" if manifest.get("end_to_end") else "Two-stage G"
            return pipe, pipe.text_tokenizer, pipe.image_tokenizer, pipe.reconstructor, g_label
        from vilgkit.stages.train_generator import load_tokenizers

        text_tok, image_tok = load_tokenizers(ctx, self.text_tokenizer_from, self.image_tokenizer_from)
        rec = self.reconstructor
        if rec is None and "reconstructor" in ctx.components:
            rec = ctx.components.build("reconstructor")
        if rec is None:
            rec = two_stage_reconstructor()
        if rec.end_to_end:
            raise VilgkitError(
                f"{self.name}: an end-to-end reconstructor decodes generator hidden states; set generator_from"
            )
        return None, text_tok, image_tok, self._attach(rec, image_tok, None, None).eval(), "—"

    @staticmethod
    def _attach(rec: Reconstructor, image_tok, hidden_size, stage_dir: Path | None) -> Reconstructor:
        from vilgkit.artifacts import attach_reconstructor

        if rec.end_to_end and stage_dir is None:
            raise VilgkitError("an end-to-end reconstructor decodes generator hidden states; set generator_from")
        return attach_reconstructor(rec, image_tok, hidden_size, stage_dir)

    # ------------------------------------------------------------------ run

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vilgkit.metrics import FID
        from vilgkit.metrics.shapes import ShapesPromptAccuracy
        from vilgkit.metrics.shapes_features import ShapesFeatureExtractor
        from vilgkit.stages.evaluate import default_eval_data
        from vilgkit.stages.train_tokenizer import write_grid

        if self.source == "generated" and not self.generator_from:
            raise VilgkitError(f"{self.name}: source 'generated' needs generator_from (the generator stage)")
        start = time.perf_counter()
        out_dir = ctx.stage_dir(self.name)
        data_node: Any = "given in the stage"
        data = self.data
        if data is None:
            data, data_node = default_eval_data(ctx, self.num_samples)
        items = [data[i] for i in range(min(self.num_samples, len(data)))]
        real = torch.stack([it["image"] for it in items])
        captions = [it["caption"] for it in items]
        scenes = [it["scene"] for it in items]
        pipe, text_tok, image_tok, rec, g_label = self._decoder(ctx)
        g_label = "Gold image sequence" if self.source == "gold" else g_label
        device = pipe.device if pipe is not None else next(image_tok.parameters()).device
        seed = ctx.seed if self.seed is None else self.seed
        extractor = ShapesFeatureExtractor.load(ctx.source_dir(self.fid_weights))
        runs, decode_s = [], 0.0
        for repeat in range(self.repeats):
            t_decode = time.perf_counter()
            generated, mean_psnr = self._decode_all(
                pipe, text_tok, image_tok, rec, device, real, captions, seed + 1000 * repeat
            )
            decode_s += time.perf_counter() - t_decode
            fid = FID.with_extractor(extractor)
            fid.update(generated=generated, real=real)
            accuracy = ShapesPromptAccuracy()
            accuracy.update(generated, scenes)
            runs.append(
                {**fid.compute(), **accuracy.compute(), **({"psnr": mean_psnr} if mean_psnr is not None else {})}
            )
            if repeat == 0 and self.grid_images:
                n = min(self.grid_images, len(items))
                write_grid(real[:n], generated[:n], out_dir / SAMPLES_FILE, per_row=min(n, 8))
        metrics: dict[str, Any] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        if len(runs) > 1:
            for key in ("fid", "shapes_prompt_accuracy", "shapes_object_recall"):
                metrics[f"{key}_runs"] = [r[key] for r in runs]
        if self.reference_floor:
            metrics["fid_real_vs_real"] = self._real_floor(ctx, extractor, real)
        record = {
            "stage": self.name,
            "generator": g_label,
            "reconstructor": reconstructor_label(rec),
            "source": self.source,
            "generator_from": self.generator_from,
            "metrics": metrics,
            "settings": {
                "num_samples": len(items),
                "seed": seed,
                "repeats": self.repeats,
                "num_candidates": 1,
                "reranker": None,
                **self.sampling,
                "fid_extractor": extractor.name,
                "data": data_node,
            },
            "seconds": {"decode": decode_s, "total": time.perf_counter() - start},
        }
        from vilgkit import artifacts

        artifacts.write_json(out_dir / METRICS_FILE, record)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

    def _decode_all(self, pipe, text_tok, image_tok, rec, device, real, captions, seed):
        """Every evaluation item → an image ``[N, 3, H, W]`` in [-1, 1] (and the mean PSNR on gold codes)."""
        from vilgkit.metrics.psnr import psnr
        from vilgkit.text_encoding import encode_texts

        outputs, psnr_sum = [], 0.0
        with torch.no_grad():
            for b0 in range(0, len(captions), self.batch_size):
                chunk = captions[b0 : b0 + self.batch_size]
                images = real[b0 : b0 + self.batch_size]
                if self.source == "generated":
                    codes, ids, mask = pipe.sample_codes(
                        chunk, 1, seed=seed + b0, truncate=True, batch_size=self.batch_size, **self.sampling
                    )
                else:  # gold: the real images' code sequences
                    codes = image_tok.encode(images.to(device))
                    ids, mask, _ = encode_texts(
                        text_tok, chunk, pipe.max_text_len if pipe is not None else 64, truncate=True
                    )
                out = pipe.decode_codes(codes, ids, mask) if pipe is not None else rec.reconstruct(codes.to(device))
                out = out.float().clamp(-1, 1).cpu()
                outputs.append(out)
                psnr_sum += float(psnr(images, out)) * len(images)
        return torch.cat(outputs), (psnr_sum / len(captions) if self.source == "gold" else None)

    def _real_floor(self, ctx: RunContext, extractor, real: torch.Tensor) -> float:
        """FID between the evaluation images and as many independent real images (``val`` split)."""
        from vilgkit.metrics import FID
        from vilgkit.stages.evaluate import default_eval_data

        other, _ = default_eval_data(ctx, len(real), split="val")
        fid = FID.with_extractor(extractor)
        fid.update(generated=torch.stack([other[i]["image"] for i in range(len(real))]), real=real)
        return fid.compute()["fid"]
