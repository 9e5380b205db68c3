"""``TrainTokenizer``: train the recipe's image tokenizer, score it, save it for later stages.

Generic over any :class:`~vilgkit.interfaces.ImageTokenizer` that is also
:class:`~vilgkit.interfaces.Trainable` (VQVAE, VQGAN with its two optimizer groups, dVAE, a
third-party one). The stage folder receives:

* ``image_tokenizer.safetensors`` — the tokenizer's weights (what :func:`load_image_tokenizer` reads);
* ``image_tokenizer.json`` — class path, constructor arguments, code grid and the evaluation;
* ``reconstructions.png`` — originals (odd rows) above their reconstructions (even rows);
* ``samples/step_<N>.png`` every ``sample_every`` steps, plus the Trainer's logs and checkpoints.

Evaluation on held-out images: reconstruction MSE, PSNR, codebook usage (perplexity, share of codes
used) and, for Shapes data (samples with a ``scene``), *detector agreement*: the share of images for
which the Shapes detector reads the same objects (shape, colour, size, position) from the
reconstruction as from the original.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vilgkit import artifacts
from vilgkit.engine.config import TrainerConfig
from vilgkit.errors import VilgkitError
from vilgkit.interfaces import ImageTokenizer, RunContext, Stage
from vilgkit.registry import STAGES

WEIGHTS_FILE = artifacts.IMAGE_TOKENIZER_WEIGHTS
MANIFEST_FILE = artifacts.IMAGE_TOKENIZER_RECORD


def collate_images(samples: list[Any]) -> Any:
    """The image tokenizer stages' ``collate_fn``: the data package's collate, imported when first used."""
    from vilgkit.data import collate

    return collate(samples)


def batch_images(batch: Any) -> torch.Tensor:
    """The images of a collated batch: its ``image`` entry, or the batch itself when it is a tensor."""
    return batch["image"] if isinstance(batch, dict) else batch


def training_record(
    stage: Stage, ctx: RunContext, trainer: Any, train_metrics: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """What a tokenizer training stage records beside its weights: the stage, the recipe's tokenizer
    arguments, ``extra``, the steps taken and the numeric training metrics."""
    return {
        "stage": stage.name,
        "init": ctx.recipe.get("image_tokenizer"),
        **extra,
        "steps": trainer.step,
        "train": {k: v for k, v in train_metrics.items() if isinstance(v, (int, float))},
    }


def first_samples(data: Any, n: int) -> list[Any]:
    """The first ``n`` samples of a map-style or iterable data set."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return [data[i] for i in range(min(n, len(data)))]
    return list(itertools.islice(iter(data), n))


class ReconstructionGrid:
    """Trainer callback: every ``every`` steps, write originals above reconstructions to ``samples/``."""

    def __init__(self, every: int, images: torch.Tensor) -> None:
        self.every, self.images = every, images

    def __call__(self, step: int, module: torch.nn.Module, out_dir: Path) -> None:
        tok = getattr(module, "module", module)
        images = self.images.to(next(tok.parameters()).device)
        write_grid(images, tok.decode(tok.encode(images)), Path(out_dir) / "samples" / f"step_{step:06d}.png")


def write_grid(images: torch.Tensor, reconstructions: torch.Tensor, path: Path, per_row: int = 8) -> Path:
    """PNG grid: rows of ``per_row`` originals, each followed by the row of their reconstructions."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, images.shape[0], per_row):
        rows += [images[start : start + per_row], reconstructions[start : start + per_row]]
    grid = torch.cat([r.detach().float().cpu() for r in rows])
    save_image(grid.clamp(-1, 1) * 0.5 + 0.5, str(path), nrow=per_row, padding=2, pad_value=0.5)
    return path


@torch.no_grad()
def evaluate_tokenizer(
    tok: ImageTokenizer, data: Dataset, num_images: int = 256, batch_size: int = 32
) -> dict[str, Any]:
    """Reconstruction quality of ``tok`` on the first ``num_images`` samples of ``data``.

    Returns:
        ``mse``, ``psnr`` (dB, images in [-1, 1]), ``perplexity`` and ``usage`` of the codes over all
        evaluated images, ``images``, and for samples with a ``scene`` (Shapes) ``detector_agreement``
        (share of images whose detected objects are identical in original and reconstruction) and
        ``detector_originals`` (share whose original is detected exactly as its ground truth).
    """
    samples = first_samples(data, num_images)
    n = len(samples)
    if n == 0:
        raise VilgkitError("evaluation data set is empty")
    device = next(tok.parameters()).device
    was_training = tok.training
    tok.eval()
    sq_err, psnrs, all_codes, agree, exact, scored = 0.0, [], [], 0, 0, 0
    try:
        for start in range(0, n, batch_size):
            batch = collate_images(samples[start : start + batch_size])
            images = batch_images(batch).to(device)
            codes = tok.encode(images)
            recon = tok.decode(codes).float()
            err = (recon - images.float()).pow(2).flatten(1).mean(1)
            sq_err += float(err.sum())
            psnrs.append(10.0 * torch.log10(4.0 / err.clamp_min(1e-10)))
            all_codes.append(codes.flatten().cpu())
            scenes = batch.get("scene") if isinstance(batch, dict) else None
            if scenes is not None:
                a, e = _detector_scores(images.cpu(), recon.cpu(), scenes)
                agree, exact, scored = agree + a, exact + e, scored + len(scenes)
    finally:
        tok.train(was_training)
    codes = torch.cat(all_codes)
    counts = torch.bincount(codes, minlength=tok.codebook_size).float()
    probs = counts / counts.sum()
    out: dict[str, Any] = {
        "images": n,
        "mse": sq_err / n,
        "psnr": float(torch.cat(psnrs).mean()),
        "perplexity": float(torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum())),
        "usage": float((counts > 0).float().mean()),
    }
    if scored:
        out["detector_agreement"] = agree / scored
        out["detector_originals"] = exact / scored
    return out


def _detector_scores(images: torch.Tensor, recon: torch.Tensor, scenes: list[Any]) -> tuple[int, int]:
    from vilgkit.data.shapes.detector import detect_objects
    from vilgkit.data.shapes.world import scene_key

    agree = exact = 0
    for image, rec, scene in zip(images, recon, scenes):
        original = Counter(scene_key(o) for o in detect_objects(image))
        agree += original == Counter(scene_key(o) for o in detect_objects(rec))
        exact += original == Counter(scene_key(o) for o in scene)
    return agree, exact


def save_image_tokenizer(tok: ImageTokenizer, out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``image_tokenizer.safetensors`` + ``image_tokenizer.json`` into ``out_dir`` (atomically,
    hashed into the run's manifest)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in tok.state_dict().items()}
    class_path = f"{type(tok).__module__}.{type(tok).__qualname__}"
    artifacts.save_weights(out_dir / WEIGHTS_FILE, state, metadata={"class": class_path})
    record = {
        "class_path": class_path,
        "codebook_size": int(tok.codebook_size),
        "downsample": int(tok.downsample),
        "code_dim": int(tok.code_dim),
        **manifest,
    }
    artifacts.write_json(out_dir / MANIFEST_FILE, record)
    return out_dir / WEIGHTS_FILE


def load_image_tokenizer(ctx: RunContext, source: str) -> ImageTokenizer:
    """Load trained weights into the recipe's image tokenizer (``ctx.components["image_tokenizer"]``).

    Args:
        ctx: the run context; when the recipe defines no ``image_tokenizer``, one is built from the
            class path and arguments recorded in the source's ``image_tokenizer.json``.
        source: a stage name of this run (e.g. ``"train_tokenizer"``), a folder holding
            ``image_tokenizer.safetensors``, or the path of such a file.

    Returns:
        The tokenizer in eval mode with the trained weights, also stored as the run's
        ``image_tokenizer`` component (see :func:`vilgkit.artifacts.load_image_tokenizer`).

    Raises:
        FileNotFoundError: no weights at ``source``.
        VilgkitError: the weights do not fit the recipe's tokenizer (keys or shapes listed), do not
            match the run's manifest, or the recipe's tokenizer class differs from the one trained.
    """
    path = Path(source).expanduser()
    if not (path.is_file() and path.suffix == ".safetensors"):
        path = ctx.source_dir(source) / WEIGHTS_FILE
    return artifacts.load_image_tokenizer(ctx.components, path)


def fresh_component(ctx: RunContext, key: str) -> torch.nn.Module:
    """A new, untrained instance of the recipe's component ``key`` (built on the CPU)."""
    if not callable(getattr(ctx.components, "build", None)):
        raise VilgkitError(f"cannot rebuild '{key}': the run's components cannot build fresh instances")
    with torch.device("cpu"):
        return ctx.components.build(key)


def set_component(ctx: RunContext, key: str, component: Any) -> None:
    """Make ``component`` the run's ``key`` for later stages."""
    if hasattr(ctx.components, "set"):
        ctx.components.set(key, component)
    else:
        ctx.components[key] = component


@STAGES.register_module()
class TrainTokenizer(Stage):
    """Train the recipe's ``image_tokenizer`` on images, evaluate it and save it.

    Args:
        trainer: optimisation settings (steps, batch size, lr, precision, checkpoints...).
        name: stage name and output folder (default ``train_tokenizer``).
        data: training images (default: the recipe's ``data``); samples are dicts with ``image``.
        eval_data: held-out images for the final evaluation (default: none → the first
            ``eval_images`` training samples are scored, which the report marks).
        eval_images: how many held-out images to score.
        sample_every: steps between reconstruction grids in ``samples/`` (0: none).
        num_samples: images in each grid (taken from ``eval_data``, else ``data``).
        init_from: optionally start from the weights of an earlier tokenizer stage or folder.
        min_detector_agreement: fail the stage when Shapes detector agreement falls below this
            (0: never fail; the number is reported either way).
    """

    trains = "image_tokenizer"

    def __init__(
        self,
        trainer: TrainerConfig | None = None,
        name: str | None = None,
        data: Dataset | None = None,
        eval_data: Dataset | None = None,
        eval_images: int = 256,
        sample_every: int = 0,
        num_samples: int = 16,
        init_from: str | None = None,
        min_detector_agreement: float = 0.0,
    ) -> None:
        super().__init__(name)
        if eval_images < 1 or num_samples < 1:
            raise ValueError("eval_images and num_samples must be at least 1")
        self.trainer = trainer or TrainerConfig()
        self.data, self.eval_data = data, eval_data
        self.eval_images, self.sample_every, self.num_samples = eval_images, sample_every, num_samples
        self.init_from = init_from
        self.min_detector_agreement = min_detector_agreement

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vilgkit.engine.trainer import Trainer

        tok = ctx.component("image_tokenizer")
        if not callable(getattr(tok, "training_losses", None)):
            raise VilgkitError(
                f"{type(tok).__name__} is not Trainable: it cannot be trained by the train_tokenizer stage"
            )
        if self.init_from:
            artifacts.load_weights(tok, ctx.source_dir(self.init_from) / WEIGHTS_FILE)
        data = self.data if self.data is not None else ctx.component("data")
        held_out = self.eval_data if self.eval_data is not None else data
        out_dir = ctx.stage_dir(self.name)
        preview = batch_images(collate_images(first_samples(held_out, self.num_samples)))
        callbacks = [ReconstructionGrid(self.sample_every, preview)] if self.sample_every else []
        # the trainer combines config.seed with the run's seed itself
        trainer = Trainer.for_stage(
            ctx,
            self,
            tok,
            data,
            self.trainer,
            collate_fn=collate_images,
            callbacks=callbacks,
            rebuild=lambda: fresh_component(ctx, "image_tokenizer"),
        )
        train_metrics = trainer.fit(resume=ctx.resume)
        # a sharding strategy changed tok in place: every rank continues with a plain trained copy
        tok = trainer.trained_module()
        set_component(ctx, "image_tokenizer", tok)
        if not trainer.strategy.is_main:  # the main rank evaluates and writes; the runner's barrier waits for it
            return {}
        return score_and_save(
            tok,
            held_out,
            self.eval_images,
            preview,
            out_dir,
            training_record(self, ctx, trainer, train_metrics),
            self.min_detector_agreement,
            held_out=self.eval_data is not None,
        )


@STAGES.register_module()
class EvaluateTokenizer(Stage):
    """Score the recipe's ``image_tokenizer`` as it is (e.g. a published :class:`TamingVQGAN`) and
    save it like :class:`TrainTokenizer` does, so generator stages can name this stage as their
    ``image_tokenizer_from``.

    Args:
        name: stage name and output folder (default ``evaluate_tokenizer``).
        data: images to score (default: the recipe's ``data``).
        eval_images: how many images to score.
        num_samples: images in ``reconstructions.png``.
        min_detector_agreement: fail below this Shapes detector agreement (0: never).
    """

    def __init__(
        self,
        name: str | None = None,
        data: Dataset | None = None,
        eval_images: int = 256,
        num_samples: int = 16,
        min_detector_agreement: float = 0.0,
    ) -> None:
        super().__init__(name)
        if eval_images < 1 or num_samples < 1:
            raise ValueError("eval_images and num_samples must be at least 1")
        self.data, self.eval_images, self.num_samples = data, eval_images, num_samples
        self.min_detector_agreement = min_detector_agreement

    def run(self, ctx: RunContext) -> dict[str, Any]:
        tok = ctx.component("image_tokenizer")
        data = self.data if self.data is not None else ctx.component("data")
        out_dir = ctx.stage_dir(self.name)
        preview = batch_images(collate_images(first_samples(data, self.num_samples)))
        record = {"stage": self.name, "init": ctx.recipe.get("image_tokenizer")}
        return score_and_save(tok, data, self.eval_images, preview, out_dir, record, self.min_detector_agreement)


def score_and_save(
    tok: ImageTokenizer,
    data: Dataset,
    eval_images: int,
    preview: torch.Tensor,
    out_dir: Path,
    record: dict[str, Any],
    min_detector_agreement: float,
    held_out: bool | None = None,
) -> dict[str, Any]:
    """The end of every tokenizer stage: score ``tok`` on ``data``, write ``reconstructions.png`` of
    ``preview``, save the tokenizer with ``record`` (+ image size, grid and evaluation) and
    ``eval.json``, then fail below ``min_detector_agreement``. Returns the stage's ``eval/`` metrics.

    ``held_out`` (when given) is recorded in the evaluation: whether ``data`` is held-out data.
    """
    evaluation = evaluate_tokenizer(tok, data, eval_images)
    if held_out is not None:
        evaluation["held_out"] = held_out
    with torch.no_grad():
        tok.eval()
        images = preview.to(next(tok.parameters()).device)
        write_grid(images, tok.decode(tok.encode(images)), out_dir / "reconstructions.png")
    manifest = {
        **record,
        "image_size": list(preview.shape[-2:]),
        "grid": list(tok.grid_size(*preview.shape[-2:])),
        "eval": evaluation,
    }
    save_image_tokenizer(tok, out_dir, manifest)
    artifacts.write_json(out_dir / artifacts.TOKENIZER_EVAL, evaluation)
    check_bar(evaluation, min_detector_agreement, out_dir)
    return {f"eval/{k}": v for k, v in evaluation.items() if isinstance(v, (int, float))}


def check_bar(evaluation: dict[str, Any], bar: float, out_dir: Path) -> None:
    """Fail the stage when the Shapes detector agreement is below the recipe's ``bar`` (0: never)."""
    if bar and evaluation.get("detector_agreement", 1.0) < bar:
        raise VilgkitError(
            f"detector agreement {evaluation['detector_agreement']:.3f} is below the recipe's bar {bar} "
            f"(see {out_dir / 'reconstructions.png'})"
        )
