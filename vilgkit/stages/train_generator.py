"""``TrainGenerator`` and ``FinetuneVQA``: train the unified transformer through the Trainer.

Both stages load the fitted text tokenizer and the trained (frozen) image tokenizer from earlier
stages, tokenize the data set once (:func:`vilgkit.stages.generator_training.tokenize_dataset`, cached in the
stage folder), train the requested directions on every batch, write periodic sample grids, and save
what :class:`vilgkit.Pipeline` needs into the stage folder:

* ``generator.safetensors`` — the generator's weights (``reconstructor.safetensors`` too when the
  reconstructor is trained end to end);
* ``generator.json`` — the manifest: where the tokenizers came from, the code grid, the image size,
  the text budget, the trained directions and the final metrics.

Text rows are ``[BOS] ids… [EOS]`` padded with the tokenizer's pad id; texts longer than the
generator's ``max_text_len`` (BOS and EOS included) are truncated, and their number is logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, IterableDataset

from vilgkit import artifacts
from vilgkit.data.code_shards import image_tokenizer_fingerprint, text_tokenizer_fingerprint
from vilgkit.engine.config import TrainerConfig
from vilgkit.errors import VilgkitError
from vilgkit.init_defaults import init_with_defaults
from vilgkit.interfaces import RunContext, Stage
from vilgkit.registry import STAGES
from vilgkit.stages.generator_training import (
    GeneratorTrainable,
    SampleGrids,
    TokenizedDataset,
    check_direction_fractions,
    check_direction_weights,
    collate_tokenized,
    dataset_fingerprint,
    peek_samples,
    tokenize_dataset,
)

GENERATOR_FILE = artifacts.GENERATOR_WEIGHTS
RECONSTRUCTOR_FILE = artifacts.RECONSTRUCTOR_WEIGHTS
MANIFEST_FILE = artifacts.GENERATOR_RECORD
TOKENIZED_FILE = artifacts.TOKENIZED_CACHE

Direction = Literal["txt2img", "img2txt", "vqa"]


#: a ``*_tokenizer_from`` value meaning "the recipe's component as it is built" (a published
#: ``vocab_file``, a taming checkpoint): no fit or training stage needed
FROM_RECIPE = artifacts.FROM_RECIPE


def load_tokenizers(ctx: RunContext, text_from: str, image_from: str):
    """The text and image tokenizers: from earlier stages or folders (files verified against the
    run's manifest), or (``"recipe"``) as the recipe builds them."""
    if text_from == FROM_RECIPE:
        text_tok = ctx.component("text_tokenizer")
        if not text_tok.is_fitted:
            raise VilgkitError(
                "text_tokenizer_from: recipe needs a ready text tokenizer (e.g. WordPieceTokenizer "
                "with a vocab_file); this one must be fitted: add a FitTextTokenizer stage"
            )
    else:
        text_tok = artifacts.load_text_tokenizer(ctx.components, ctx.source_dir(text_from))
    if image_from == FROM_RECIPE:
        image_tok = ctx.component("image_tokenizer").eval()
    else:
        image_tok = artifacts.load_image_tokenizer(ctx.components, _image_tokenizer_path(ctx, image_from))
    return text_tok, image_tok


def _image_tokenizer_path(ctx: RunContext, source: str) -> Path:
    path = Path(source).expanduser()
    return (
        path
        if path.is_file() and path.suffix == ".safetensors"
        else ctx.source_dir(source) / artifacts.IMAGE_TOKENIZER_WEIGHTS
    )


def _source_record(ctx: RunContext, source: str) -> str:
    """What the manifest records for a tokenizer source (``recipe``, or the folder relative to the run)."""
    return source if source == FROM_RECIPE else str(_relative(ctx.source_dir(source), ctx.run_dir))


def _load_cached(folders: list[Path], fingerprint: str):
    """The first ``tokenized.safetensors`` in ``folders`` made from the same data and tokenizers, as
    ``(dataset, collate, stats)``, or ``None``. A cache that does not verify (or read) is reported
    and ignored: the data is tokenized again."""
    for folder in folders:
        cached = folder / TOKENIZED_FILE
        if not cached.is_file():
            continue
        try:
            if artifacts.tensor_metadata(cached).get("fingerprint") != fingerprint:
                continue
            tensors = artifacts.read_weights(cached)
        except artifacts.CorruptFileError as err:
            artifacts.warn(f"ignoring the tokenized-data cache: {err}")
            continue
        return TokenizedDataset(tensors), collate_tokenized, {"samples": len(tensors["codes"]), "cached": True}
    return None


def tokenized_fingerprint(
    ctx: RunContext, dataset: Any, sources: tuple[str, str], text_tok: Any, image_tok: Any, max_len: int
) -> str:
    """What a ``tokenized.safetensors`` cache was made from: the data set, the tokenizers' files
    (``sources``: where the text and image tokenizers came from) and contents, the text budget."""
    folders = [ctx.source_dir(s) for s in sources if s != FROM_RECIPE]
    tokenizers = f"{text_tokenizer_fingerprint(text_tok)}:{image_tokenizer_fingerprint(image_tok)}"
    return f"{dataset_fingerprint(dataset, *folders)}:{tokenizers}:{max_len}"


def check_special_ids(generator: Any, text_tokenizer: Any) -> None:
    """Frame texts with the tokenizer's special ids and check the text vocabulary fits the generator.

    The ids are the tokenizer's (a BERT ``vocab.txt`` puts ``[PAD] [CLS] [SEP]`` where it likes:
    bert-base-chinese has 0, 101, 102), so they are set on the generator here rather than by hand
    in the recipe; they are not weights, and the same tokenizer is loaded with the weights later.
    """
    size = int(text_tokenizer.vocab_size)
    if size > generator.text_vocab_size:
        raise VilgkitError(
            f"the text tokenizer has {size} ids but the generator's text vocabulary only "
            f"{generator.text_vocab_size}; raise text_tokenizer.init_args.vocab_size to at least {size}"
        )
    for name in ("pad_id", "bos_id", "eos_id"):
        wanted = getattr(text_tokenizer, name)
        if getattr(generator, name, None) is not None and wanted is not None:
            setattr(generator, name, int(wanted))


def load_generator_weights(generator: torch.nn.Module, source_dir: Path) -> dict[str, Any]:
    """Load ``generator.safetensors`` from a generator stage folder; returns its manifest."""
    return artifacts.load_generator_weights(generator, source_dir)


class _GeneratorStage(Stage):
    """Shared machinery of the generator stages (see the module docstring)."""

    default_directions: tuple[str, ...] = ("txt2img", "img2txt")
    trains = "generator"

    def __init__(
        self,
        trainer: TrainerConfig | None = None,
        name: str | None = None,
        text_tokenizer_from: str = "fit_text_tokenizer",
        image_tokenizer_from: str = "train_tokenizer",
        generator_from: str | None = None,
        data: Dataset | None = None,
        directions: list[Direction] | None = None,
        precompute: bool = True,
        reconstructor_weight: float = 1.0,
        sample_every: int = 0,
        num_samples: int = 8,
        direction_fractions: dict[str, float] | None = None,
        direction_weights: dict[str, float] | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__(name)
        self.shuffle = bool(shuffle)
        self.trainer = trainer or TrainerConfig()
        self.text_tokenizer_from = text_tokenizer_from
        self.image_tokenizer_from = image_tokenizer_from
        self.generator_from = generator_from
        self.data = data
        self.directions = list(directions or self.default_directions)
        self.direction_fractions = check_direction_fractions(direction_fractions, self.directions)
        self.direction_weights = check_direction_weights(direction_weights, self.directions)
        self.precompute = precompute
        self.reconstructor_weight = reconstructor_weight
        self.sample_every = sample_every
        self.num_samples = num_samples
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")

    # ------------------------------------------------------------------ data

    def _training_data(self, ctx: RunContext, out_dir: Path, text_tok, image_tok, max_len: int):
        """Tokenized (cached) or raw training data, with the matching collate function."""
        dataset = self.data if self.data is not None else ctx.component("data")
        reconstructor = ctx.components.get("reconstructor") if "reconstructor" in ctx.components else None
        if callable(getattr(dataset, "check_tokenizers", None)):  # code shards: made with these tokenizers?
            dataset.check_tokenizers(image_tok, text_tok)
        streamed = isinstance(dataset, IterableDataset)
        if streamed or not self.precompute or getattr(reconstructor, "end_to_end", False):
            from vilgkit.stages.generator_training import _raw_collate

            if streamed and self.precompute:
                # a stream has no length to tokenize ahead: the trainer's steps decide how much is read
                print(
                    f"{self.name}: the data is a stream ({type(dataset).__name__}): batches are tokenized as they "
                    "arrive (`vilgkit tokenize` writes code shards once, for data read many times)"
                )
            samples = None if streamed else len(dataset)
            return dataset, _raw_collate, {"samples": samples, "tokenized": False, "streamed": streamed}
        fingerprint = tokenized_fingerprint(
            ctx, dataset, (self.text_tokenizer_from, self.image_tokenizer_from), text_tok, image_tok, max_len
        )
        folders = [out_dir] + ([ctx.source_dir(self.generator_from)] if self.generator_from else [])
        found = _load_cached(folders, fingerprint)
        from vilgkit.engine.ranks import is_main_process, stage_barrier

        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            # Under torchrun the main rank tokenizes and writes once; the others wait for it and read
            # its file instead of tokenizing the whole data set N−1 more times. Every rank reaches the
            # barrier exactly once, cache hit or not, so no rank can wait for one that went ahead.
            main, made = is_main_process(), None
            if main and found is None:
                made = self._tokenize(dataset, text_tok, image_tok, max_len, out_dir, fingerprint)
            stage_barrier(ctx)
            if main:
                return found or made
            found = found or _load_cached([out_dir], fingerprint)
            if found is None:  # a run directory that is not shared between nodes
                print(f"{self.name}: the main rank's {TOKENIZED_FILE} is not visible here; tokenizing on this rank too")
                return self._tokenize(dataset, text_tok, image_tok, max_len, None, fingerprint)
        return found or self._tokenize(dataset, text_tok, image_tok, max_len, out_dir, fingerprint)

    def _tokenize(self, dataset, text_tok, image_tok, max_len: int, out_dir: Path | None, fingerprint: str):
        """Tokenize ``dataset`` and (with ``out_dir``) write the cache, atomically."""
        tensors, stats = tokenize_dataset(
            dataset, text_tok, image_tok, max_text_len=max_len, desc=f"{self.name}: tokenizing"
        )
        if out_dir is not None:
            artifacts.save_weights(
                out_dir / TOKENIZED_FILE,
                {k: v.contiguous() for k, v in tensors.items()},
                metadata={"fingerprint": fingerprint},
            )  # a rank never reads a half-written cache
        if stats["truncated"]:
            print(f"{self.name}: {stats['truncated']} texts were longer than {max_len - 2} tokens and were truncated")
        return TokenizedDataset(tensors), collate_tokenized, stats

    def _sample_callback(self, ctx, dataset, text_tok, image_tok, grid) -> list[Any]:
        if self.sample_every <= 0:
            return []
        raw = self.data if self.data is not None else ctx.component("data")
        items = peek_samples(raw, self.num_samples)
        prompts = [it["caption"] for it in items]
        images = torch.stack([it["image"] for it in items])
        return [SampleGrids(self.sample_every, prompts, images, text_tok, image_tok, grid, seed=ctx.seed)]

    # ------------------------------------------------------------------ run

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vilgkit.engine.trainer import Trainer

        reconstructor = ctx.components["reconstructor"] if "reconstructor" in ctx.components else None
        if getattr(reconstructor, "end_to_end", False) and "txt2img" not in self.directions:
            # it trains on the generator's txt2img hidden states: without that direction there are none
            raise VilgkitError(
                f"stage {self.name!r} ({type(self).__name__}): reconstructor {type(reconstructor).__name__} is trained "
                f"end to end on the txt2img hidden states, but this stage trains directions {self.directions}; "
                "add txt2img to its directions or use a two-stage reconstructor (e.g. TwoStageReconstructor)"
            )
        out_dir = ctx.stage_dir(self.name)
        text_tok, image_tok = load_tokenizers(ctx, self.text_tokenizer_from, self.image_tokenizer_from)
        generator = self._build_generator(ctx)
        check_special_ids(generator, text_tok)
        # the trained tokenizer, the generator's width; an end-to-end one continues from generator_from
        artifacts.attach_reconstructor(
            reconstructor,
            image_tok,
            int(generator.hidden_size),
            ctx.source_dir(self.generator_from) if self.generator_from else None,
            required=False,
        )
        max_len = int(generator.max_text_len)
        dataset, collate, data_stats = self._training_data(ctx, out_dir, text_tok, image_tok, max_len)
        grid = self._grid(dataset, image_tok)
        module = self._trainable(generator, text_tok, image_tok, reconstructor)
        end_to_end, max_text_len = module.reconstructor is not None, int(generator.max_text_len)
        trainer = Trainer.for_stage(
            ctx,
            self,
            module,
            dataset,
            self.trainer,
            collate_fn=collate,
            shuffle=self.shuffle,
            callbacks=self._sample_callback(ctx, dataset, text_tok, image_tok, grid),
            rebuild=lambda: self._fresh_trainable(ctx, text_tok, image_tok, end_to_end),
            export_parts={"generator.": GENERATOR_FILE, "reconstructor.": RECONSTRUCTOR_FILE},
        )
        metrics = trainer.fit(resume=ctx.resume)  # writes generator.safetensors (+ reconstructor)
        if trainer.sharded_in_place:
            # No rank takes a full copy: every rank drops its shards; later stages read the files
            # (a generator stage builds on meta through the strategy, Evaluate loads on the main rank).
            del module, generator, reconstructor
            trainer.close()
            _forget_components(ctx, end_to_end)
        else:  # the module itself, plain on every rank (single device, DDP)
            _keep_components(ctx, trainer.trained_module())
        if trainer.strategy.is_main:
            self._save(ctx, out_dir, grid, image_tok, data_stats, metrics, end_to_end, max_text_len)
        return {
            "directions": self.directions,
            **{k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
        }

    def _build_generator(self, ctx: RunContext):
        """The generator through the run's strategy (a sharding one builds it on meta and fills
        each rank's shards in ``wrap``): fresh, or starting from ``generator_from``'s weights file."""
        from vilgkit.engine.trainer import run_strategy

        if ctx.recipe.get("generator") is None and not self.generator_from:
            raise KeyError(f"{self.name} needs 'generator' but the recipe does not define it")
        strategy = run_strategy(ctx)
        if not self.generator_from:
            return strategy.build_module(lambda: ctx.components.build("generator"))
        source = ctx.source_dir(self.generator_from)
        if not (source / GENERATOR_FILE).is_file():
            raise FileNotFoundError(f"no {GENERATOR_FILE} in {source}: run the generator stage first")
        # the run's generator: the trained module an unsharded earlier stage kept, else a new one
        return strategy.build_module(lambda: ctx.component("generator"), weights=source / GENERATOR_FILE)

    @staticmethod
    def _grid(dataset, image_tok) -> tuple[int, int]:
        size = getattr(dataset, "image_size", None)
        if isinstance(dataset, IterableDataset) and isinstance(size, int):
            return image_tok.grid_size(size, size)  # known without reading the stream
        item = peek_samples(dataset, 1)[0]
        if "codes" in item:
            return tuple(int(s) for s in item["codes"].shape[-2:])  # type: ignore[return-value]
        return image_tok.grid_size(*item["image"].shape[-2:])

    def _trainable(self, generator, text_tok, image_tok, reconstructor) -> GeneratorTrainable:
        """The trained module: these components with this stage's directions and loss weights (the
        one definition for training and for the fresh copy the Trainer loads weights into)."""
        return GeneratorTrainable(
            generator,
            text_tok,
            image_tok,
            self.directions,
            reconstructor,
            self.reconstructor_weight,
            self.direction_fractions,
            self.direction_weights,
        )

    def _fresh_trainable(self, ctx: RunContext, text_tok, image_tok, end_to_end: bool) -> GeneratorTrainable:
        """An unwrapped, untrained copy of the trained module (fresh generator and end-to-end
        reconstructor, the same tokenizers): the Trainer loads the consolidated weights into it."""
        from vilgkit.stages.train_tokenizer import fresh_component

        generator = fresh_component(ctx, "generator")
        reconstructor = fresh_component(ctx, "reconstructor") if end_to_end else None
        artifacts.attach_reconstructor(reconstructor, image_tok, int(generator.hidden_size), required=False)
        return self._trainable(generator, text_tok, image_tok, reconstructor)

    def _save(self, ctx, out_dir, grid, image_tok, data_stats, metrics, end_to_end: bool, max_text_len: int) -> None:
        """The manifest (main rank only); the trainer has written the weights files."""
        manifest = {
            "stage": self.name,
            "text_tokenizer": _source_record(ctx, self.text_tokenizer_from),
            "image_tokenizer": _source_record(ctx, self.image_tokenizer_from),
            "grid": list(grid),
            "image_size": [grid[0] * image_tok.downsample, grid[1] * image_tok.downsample],
            "max_text_len": max_text_len,
            "directions": self.directions,
            "direction_fractions": self.direction_fractions,
            "direction_weights": self.direction_weights,
            "end_to_end": end_to_end,
            "steps": self.trainer.steps,
            "data": data_stats,
            "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str))},
        }
        artifacts.write_json(out_dir / MANIFEST_FILE, manifest)


def _keep_components(ctx: RunContext, module: GeneratorTrainable) -> None:
    """Later stages (and ``generator_from``) continue from the trained, unwrapped modules."""
    from vilgkit.stages.train_tokenizer import set_component

    set_component(ctx, "generator", module.generator)
    if module.reconstructor is not None:
        set_component(ctx, "reconstructor", module.reconstructor)


def _forget_components(ctx: RunContext, end_to_end: bool) -> None:
    """After a sharding strategy trained them in place: the run's generator (and a trained
    reconstructor) are built afresh when a later stage asks for them, and load the saved files."""
    keys = ("generator", "reconstructor") if end_to_end else ("generator",)
    for key in keys:
        forget = getattr(ctx.components, "forget", None)
        if callable(forget):
            forget(key)
        else:
            ctx.components.pop(key, None)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path.resolve()


@STAGES.register_module()
class TrainGenerator(_GeneratorStage):
    """Train the generator on both directions each batch (L = L_txt2img + L_img2txt, eq. 3–5).

    Args:
        trainer: optimisation settings (steps, batch size, lr, precision...).
        name: stage name and output folder (default ``train_generator``).
        text_tokenizer_from: stage name or folder holding the fitted text tokenizer, or ``recipe``: the
            recipe's ``text_tokenizer`` as built (a published ``vocab_file``; no fit stage needed).
        image_tokenizer_from: stage name or folder holding the trained image tokenizer (frozen here), or
            ``recipe``: the recipe's ``image_tokenizer`` as built (e.g. a ``TamingVQGAN`` checkpoint).
        generator_from: optionally continue from a generator stage's ``generator.safetensors``.
        data: the training data (default: the recipe's ``data``).
        directions: directions trained every batch (default ``[txt2img, img2txt]``; add ``vqa`` to
            train question answering jointly).
        precompute: tokenize the data set once before training (True) or every batch (False; always
            the case with an end-to-end reconstructor, which needs the images).
        reconstructor_weight: weight of the end-to-end reconstruction loss, when the recipe's
            reconstructor has ``end_to_end = True``.
        sample_every: steps between sample grids (0: none).
        num_samples: prompts / images per sample grid.
        direction_fractions: share of each batch's rows a direction trains on (default 1 each), e.g.
            ``{img2txt: 0.5, txt2img: 0.5}`` to rehearse on half the rows (see
            :class:`~vilgkit.stages.generator_training.GeneratorTrainable`).
        direction_weights: weight of a direction's loss in the optimised sum (default 1 each), e.g.
            ``{vqa: 4}`` (see :class:`~vilgkit.stages.generator_training.GeneratorTrainable`).
        shuffle: permute map-style data every epoch (False: the data set's order, e.g. code shards in
            the order of the stream they were made from; a stream keeps its own order either way).
    """


@STAGES.register_module()
class FinetuneVQA(_GeneratorStage):
    """Continue from a trained generator and train generative VQA (``[image, question | answer]``).

    Same arguments as :class:`TrainGenerator`; ``generator_from`` defaults to ``train_generator``
    and ``directions`` to ``[vqa]`` (add ``img2txt``/``txt2img`` to keep rehearsing them).
    """

    default_directions = ("vqa",)
    __init__ = init_with_defaults(_GeneratorStage.__init__, generator_from="train_generator")
