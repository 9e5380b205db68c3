"""The ``Evaluate`` stage: score a trained run on held-out data and write ``eval.json`` + ``report.html``.

A recipe's last stage, e.g.::

    - class_path: Evaluate
      init_args:
        metrics: [shapes, caption, vqa, fid]
        num_samples: 200
        num_candidates: 8
        reranker: {class_path: SelfReranker}
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vilgkit.artifacts import SHAPES_FEATURES_DIR  # noqa: F401  (re-exported)
from vilgkit.errors import VilgkitError
from vilgkit.inference_settings import InferenceSettings, reranker_name, save_inference_settings
from vilgkit.interfaces import Reranker, RunContext, Stage
from vilgkit.registry import STAGES


def default_eval_data(ctx: RunContext, num_samples: int, split: str = "test") -> tuple[Any, dict[str, Any]]:
    """The recipe's data class on its ``split`` split (when it has splits), sized ``num_samples``."""
    from vilgkit.recipe import build

    node = copy.deepcopy(ctx.recipe.get("data"))
    if node is None:
        raise KeyError("Evaluate needs evaluation data: give `data` or define the recipe's `data`")
    module_name, _, attr = node["class_path"].rpartition(".")
    import importlib

    params = inspect.signature(getattr(importlib.import_module(module_name), attr).__init__).parameters
    init = node.setdefault("init_args", {}) or {}
    node["init_args"] = init
    if "split" in params:
        init["split"] = split
    if "size" in params:
        init["size"] = num_samples
    return build("data", node), node


def evaluate_stage_args(recipe: dict[str, Any]) -> dict[str, Any]:
    """The ``init_args`` of the recipe's (first) ``Evaluate`` stage, or ``{}``: what ``vilgkit eval``
    of the run falls back to for its data and FID feature space."""
    for node in recipe.get("stages") or []:
        if isinstance(node, dict) and str(node.get("class_path", "")).rpartition(".")[2] == "Evaluate":
            return node.get("init_args") or {}
    return {}


def recipe_eval_data(recipe: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    """The held-out data the recipe's ``Evaluate`` stage names (its ``data``), or ``None``."""
    from vilgkit.recipe import build

    data = evaluate_stage_args(recipe).get("data")
    return (build("data", copy.deepcopy(data)), data) if data is not None else None


def shapes_feature_weights(run_dir: Path, image_size: int, log=print) -> str:
    """The run's Shapes FID extractor (``run_dir/shapes_features``), trained there on first use."""
    from vilgkit.artifacts import record_tree
    from vilgkit.metrics.shapes_features import WEIGHTS_FILE, train_shapes_feature_extractor

    directory = run_dir / SHAPES_FEATURES_DIR
    if not (directory / WEIGHTS_FILE).is_file():
        log(f"evaluate: training the Shapes FID feature extractor into {directory} (once per run)")
        train_shapes_feature_extractor(image_size=image_size, out_dir=directory, log=log)
        record_tree(directory)
    return str(directory)


def check_evaluation_fits(ctx: RunContext, generator_from: str | None) -> None:
    """Refuse (one line) to load the evaluated generator on the main rank when two fp32 copies of
    it (the built module and its file's tensors) do not fit the host's available memory now: the
    ``evaluate`` phase of ``vilgkit plan``, checked when it happens (the other ranks hold no copy)."""
    from vilgkit.artifacts import GENERATOR_WEIGHTS, stage_names
    from vilgkit.planning import gib
    from vilgkit.recipe_plan import available_host_bytes, full_copy_fits
    from vilgkit.tensor_file import TensorFile

    if generator_from:
        folders = [ctx.source_dir(generator_from)]
    else:  # the last stage that saved a generator, as Pipeline.from_run_dir picks it
        folders = [ctx.run_dir / name for name in reversed(stage_names(ctx.recipe))]
    path = next((f / GENERATOR_WEIGHTS for f in folders if (f / GENERATOR_WEIGHTS).is_file()), None)
    if path is None:  # nothing saved yet: loading the pipeline reports what is missing
        return
    need = 2 * TensorFile(path).nbytes()
    if not full_copy_fits(need):
        raise VilgkitError(
            f"evaluate: loading {path} on the main rank needs about {gib(need)} GiB (two fp32 copies) but this host "
            f"has {gib(available_host_bytes())} GiB available; run `vilgkit eval {ctx.run_dir}` on a machine with "
            "more memory, or drop the Evaluate stage from this launch"
        )


@STAGES.register_module()
class Evaluate(Stage):
    """Evaluate the run's generator in both directions (and VQA) with the selected metrics.

    Args:
        name: stage name and output folder (default ``evaluate``).
        metrics: any of ``shapes``, ``caption``, ``vqa``, ``fid``.
        generator_from: the generator stage to evaluate (default: the last one that saved a generator).
        data: evaluation data, map-style or a stream (default: the recipe's data class on its ``test``
            split; ``vilgkit eval`` of the run uses this stage's ``data`` too).
        num_samples: items evaluated.
        batch_size: prompts / images per generation batch.
        num_candidates: images sampled per prompt; the reranker keeps one.
        reranker: e.g. ``{class_path: SelfReranker}``, or a short name (``self``, ``self_mean``,
            ``pmi``, ``caption``, ``none``; :mod:`vilgkit.reranker_names`) (default: keep the first
            candidate).
        temperature, top_k, top_p, cfg_scale: image sampling settings.
        caption_method, num_beams: caption decoding.
        fid_extractor: ``shapes`` (trained on first use, no download) or ``inception``.
        fid_weights: the extractor's weights (Inception file / Shapes extractor directory).
        report_examples: samples per task shown in the report.
        seed: base sampling seed (default: the run's seed).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    def __init__(
        self,
        name: str | None = None,
        metrics: list[str] | None = None,
        generator_from: str | None = None,
        data: Dataset | None = None,
        num_samples: int = 200,
        batch_size: int = 16,
        num_candidates: int = 8,
        reranker: Reranker | str | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 1.0,
        caption_method: str = "greedy",
        num_beams: int = 4,
        fid_extractor: str = "shapes",
        fid_weights: str | None = None,
        report_examples: int = 8,
        seed: int | None = None,
        device: str = "auto",
    ) -> None:
        super().__init__(name)
        from vilgkit.metrics import METRIC_KEYS

        self.metrics = list(metrics or ["shapes", "caption", "vqa", "fid"])
        unknown = [m for m in self.metrics if m not in METRIC_KEYS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRIC_KEYS)}")
        if num_samples <= 0 or batch_size <= 0 or num_candidates <= 0:
            raise ValueError("num_samples, batch_size and num_candidates must be positive")
        if fid_extractor not in ("shapes", "inception"):
            raise ValueError(f"fid_extractor must be 'shapes' or 'inception', got {fid_extractor!r}")
        self.generator_from, self.data = generator_from, data
        self.num_samples, self.batch_size = num_samples, batch_size
        if isinstance(reranker, str):
            from vilgkit.errors import VilgkitError
            from vilgkit.reranker_names import build_named_reranker

            try:
                reranker = build_named_reranker(reranker)
            except VilgkitError as err:  # the recipe's constructor error (names the stage and key)
                raise ValueError(str(err)) from None
        self.reranker = reranker
        from vilgkit.metrics.harness import SamplingSettings

        self.sampling = SamplingSettings(
            num_candidates=num_candidates,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            cfg_scale=cfg_scale,
            caption_method=caption_method,
            num_beams=num_beams,
        )
        self.fid_extractor, self.fid_weights = fid_extractor, fid_weights
        self.report_examples, self.seed, self.device = report_examples, seed, device

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vilgkit.engine.ranks import is_main_process

        if not is_main_process():  # under torchrun the main rank evaluates; the others wait at the runner's barrier
            return {}
        from vilgkit.metrics.harness import RESULTS_FILE

        check_evaluation_fits(ctx, self.generator_from)
        metrics = run_evaluation(
            ctx.run_dir,
            ctx.stage_dir(self.name),
            metrics=self.metrics,
            stage=self.generator_from,
            data=self.data,
            recipe=ctx.recipe,
            num_samples=self.num_samples,
            batch_size=self.batch_size,
            sampling=self.sampling,
            reranker=self.reranker,
            seed=ctx.seed if self.seed is None else self.seed,
            fid_extractor=self.fid_extractor,
            fid_weights=self.fid_weights,
            report_examples=self.report_examples,
            device=self.device,
        )["metrics"]
        # The run now carries the settings its numbers were measured with: Pipeline, the CLI and
        # `vilgkit serve` default to them (issue: users got worse images than the report showed).
        save_inference_settings(ctx.run_dir, self.inference_settings(f"{self.name}/{RESULTS_FILE}"))
        return metrics

    def inference_settings(self, report: str | None = None) -> InferenceSettings:
        """The settings this stage evaluates with, as the run's inference defaults."""
        # every sampling setting is an inference setting of the same name
        sampling = dataclasses.asdict(self.sampling)
        reranker = reranker_name(self.reranker)
        return InferenceSettings(**sampling, reranker=reranker, evaluated_by=self.name, report=report)


def run_evaluation(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    metrics: list[str],
    stage: str | None = None,
    data: Any = None,
    recipe: dict[str, Any] | None = None,
    num_samples: int = 200,
    batch_size: int = 16,
    sampling: Any = None,
    reranker: Reranker | None = None,
    seed: int = 0,
    fid_extractor: str = "shapes",
    fid_weights: str | None = None,
    report_examples: int = 8,
    device: str = "auto",
    log=print,
) -> dict[str, Any]:
    """Load the run's pipeline, pick the data and FID weights, and run the harness (stage and CLI)."""
    from vilgkit.artifacts import GENERATOR_RECORD, GENERATOR_WEIGHTS, read_json, read_recipe
    from vilgkit.metrics.harness import evaluate, file_fingerprint
    from vilgkit.pipeline import Pipeline

    run_dir = Path(run_dir)
    pipe = Pipeline.from_run_dir(run_dir, stage=stage, device=device)
    if recipe is None:
        recipe = read_recipe(run_dir)  # verified, and validated as `vilgkit run` validates
    ctx = RunContext(run_dir=run_dir, components={}, recipe=recipe)
    data_node: Any = "given by the caller"
    if data is None:  # the Evaluate stage's held-out data, else the recipe's data on its test split
        data, data_node = recipe_eval_data(recipe) or default_eval_data(ctx, num_samples)
    if "fid" in metrics and fid_extractor == "shapes" and fid_weights is None:
        fid_weights = shapes_feature_weights(run_dir, pipe.image_size, log=log)
    manifest_path = pipe.stage_dir / GENERATOR_RECORD
    checkpoint = {
        **file_fingerprint(pipe.stage_dir / GENERATOR_WEIGHTS),
        "stage_dir": str(pipe.stage_dir),
        "manifest": read_json(manifest_path) if manifest_path.is_file() else None,
    }
    return evaluate(
        pipe,
        data,
        metrics=metrics,
        out_dir=out_dir,
        num_samples=num_samples,
        batch_size=batch_size,
        sampling=sampling,
        reranker=reranker,
        seed=seed,
        fid_extractor=fid_extractor,
        fid_weights=fid_weights,
        report_examples=report_examples,
        log=log,
        extra_record={
            "checkpoint": checkpoint,
            "data": data_node,
            "run_dir": str(run_dir),
            "metrics_selected": metrics,
        },
    )


@STAGES.register_module()
class TrainShapesFeatures(Stage):
    """Train the Shapes FID feature extractor and save it (``shapes_features.safetensors`` + JSON).

    Evaluate trains one on demand into ``run_dir/shapes_features``; this stage makes it explicit (and
    lets other stages, e.g. the reconstruction ablation, point ``fid_weights`` at its folder).

    Args:
        name: stage name and output folder (default ``train_shapes_features``).
        image_size: Shapes render size (use the run's image size).
        steps, batch_size, lr: optimisation (AdamW, one-cycle schedule).
        seed: scene and initialisation seed.
    """

    def __init__(
        self,
        name: str | None = None,
        image_size: int = 64,
        steps: int = 500,
        batch_size: int = 64,
        lr: float = 3e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(name)
        if image_size < 12 or steps <= 0 or batch_size <= 0 or lr <= 0:
            raise ValueError("image_size ≥ 12 and positive steps, batch_size, lr are required")
        self.image_size, self.steps, self.batch_size, self.lr, self.seed = image_size, steps, batch_size, lr, seed

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vilgkit.engine.ranks import is_main_process
        from vilgkit.metrics.shapes_features import train_shapes_feature_extractor

        if not is_main_process():  # one writer; the others wait at the runner's barrier
            return {}

        _, metrics = train_shapes_feature_extractor(
            image_size=self.image_size,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            out_dir=ctx.stage_dir(self.name),
        )
        return metrics
