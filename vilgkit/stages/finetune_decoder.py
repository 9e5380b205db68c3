"""``FinetuneDecoder``: train a trained image tokenizer's decoder alone, on its frozen codes.

While a VQ tokenizer trains, its codebook keeps moving (EMA updates, dead-code restarts), so the
decoder ends chasing codes that only settle at the last steps. Training the decoder alone afterwards
(encoder and codebook frozen) lets it fit the codes a generator will actually be trained on and
sample. The codes do not change: the encoder's weights are copied unchanged, so a generator trained
on the earlier stage's codes and one trained on this stage's are trained on identical data. On the
demo this raised the share of sampled candidates the Shapes detector accepts (docs/performance.md,
"Decoder fine-tuning").

The stage folder receives what :class:`~vilgkit.stages.train_tokenizer.TrainTokenizer` writes
(``image_tokenizer.safetensors`` + ``image_tokenizer.json`` with the evaluation, ``eval.json``,
``reconstructions.png``), so later stages name it as their ``image_tokenizer_from``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vilgkit.engine.config import TrainerConfig
from vilgkit.errors import VilgkitError
from vilgkit.interfaces import ImageTokenizer, RunContext, Stage, Trainable
from vilgkit.registry import STAGES
from vilgkit.stages.train_tokenizer import (
    ReconstructionGrid,
    batch_images,
    collate_images,
    first_samples,
    fresh_component,
    load_image_tokenizer,
    score_and_save,
    set_component,
    training_record,
)


class DecoderOnly(nn.Module, Trainable):
    """What the trainer drives: ``module``'s decoder, trained with ``module.decoder_loss``.

    Every other parameter of the tokenizer is frozen (``requires_grad=False``), so the one
    optimizer group holds the decoder alone.
    """

    def __init__(self, module: ImageTokenizer) -> None:
        super().__init__()
        decoder = module.decoder_parameters()  # raises NotImplementedError for tokenizers without one
        self.module = module
        for p in module.parameters():
            p.requires_grad_(False)
        for p in decoder:
            p.requires_grad_(True)

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": self.module.decoder_parameters()}

    def forward(self, batch: Any, group: str = "main", step: int = 0) -> dict[str, torch.Tensor]:
        if group != "main":
            raise KeyError(f"decoder fine-tuning has one optimizer group 'main', got {group!r}")
        return self.module.decoder_loss(batch_images(batch))


@STAGES.register_module()
class FinetuneDecoder(Stage):
    """Train the decoder of the image tokenizer saved by ``image_tokenizer_from``, codes frozen.

    Args:
        trainer: optimisation settings (steps, batch size, lr, precision, checkpoints...).
        name: stage name and output folder (default ``finetune_decoder``).
        image_tokenizer_from: the stage (or folder) whose trained tokenizer is fine-tuned.
        data: training images (default: the recipe's ``data``); samples are dicts with ``image``.
        eval_data: held-out images for the final evaluation (default: the training data's first
            ``eval_images``, as in ``TrainTokenizer``).
        eval_images: how many images to score.
        sample_every: steps between reconstruction grids in ``samples/`` (0: none).
        num_samples: images in each grid and in ``reconstructions.png``.
        min_detector_agreement: fail below this Shapes detector agreement (0: never).
    """

    trains = "image_tokenizer"

    def __init__(
        self,
        trainer: TrainerConfig | None = None,
        name: str | None = None,
        image_tokenizer_from: str = "train_tokenizer",
        data: Dataset | None = None,
        eval_data: Dataset | None = None,
        eval_images: int = 256,
        sample_every: int = 0,
        num_samples: int = 16,
        min_detector_agreement: float = 0.0,
    ) -> None:
        super().__init__(name)
        if eval_images < 1 or num_samples < 1:
            raise ValueError("eval_images and num_samples must be at least 1")
        self.trainer = trainer or TrainerConfig()
        self.image_tokenizer_from = image_tokenizer_from
        self.data, self.eval_data = data, eval_data
        self.eval_images, self.sample_every, self.num_samples = eval_images, sample_every, num_samples
        self.min_detector_agreement = min_detector_agreement

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vilgkit.engine.trainer import Trainer

        tok = load_image_tokenizer(ctx, self.image_tokenizer_from)
        try:
            model = DecoderOnly(tok)
        except NotImplementedError as err:
            raise VilgkitError(f"{self.name}: {err} (image_tokenizer_from: {self.image_tokenizer_from})") from err
        data = self.data if self.data is not None else ctx.component("data")
        held_out = self.eval_data if self.eval_data is not None else data
        out_dir = ctx.stage_dir(self.name)
        preview = batch_images(collate_images(first_samples(held_out, self.num_samples)))
        callbacks = [ReconstructionGrid(self.sample_every, preview)] if self.sample_every else []
        trainer = Trainer.for_stage(
            ctx,
            self,
            model,
            data,
            self.trainer,
            collate_fn=collate_images,
            callbacks=callbacks,
            rebuild=lambda: DecoderOnly(fresh_component(ctx, "image_tokenizer")),  # a sharded run's plain copy
        )
        train_metrics = trainer.fit(resume=ctx.resume)
        tok = trainer.trained_module().module
        for p in tok.parameters():
            p.requires_grad_(True)  # the run's component back as loaded: a later stage may train all of it
        set_component(ctx, "image_tokenizer", tok)
        if not trainer.strategy.is_main:
            return {}
        return score_and_save(
            tok,
            held_out,
            self.eval_images,
            preview,
            out_dir,
            training_record(self, ctx, trainer, train_metrics, image_tokenizer_from=self.image_tokenizer_from),
            self.min_detector_agreement,
            held_out=self.eval_data is not None,
        )
