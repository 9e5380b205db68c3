"""The training loop: one loop for every strategy (single device, DDP, FSDP).

Per optimizer step, ``grad_accum`` micro-batches are drawn once; then for every optimizer group in
``optimizer_groups()`` order (VQGAN: autoencoder, then discriminator) the loop clears all gradients,
runs forward + backward on each micro-batch (``strategy.no_sync`` on all but the last), checks that
every loss and the gradient norm are finite (agreed across ranks), clips, and steps that group's
AdamW and schedule. A non-finite value never reaches an optimizer: policy ``stop`` raises
:class:`NonFiniteLossError` naming the step, group and samples; ``skip`` drops that group's update,
counts it, and stops after ``max_skipped``.

The training pass is the wrapped module's call, ``wrapped(batch, group, step)`` (the module's
``forward``), so DDP's and FSDP's hooks run; the module's ``training_losses(outputs, batch, group,
step)`` then turns the outputs into named losses (:class:`~vilgkit.interfaces.Trainable`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import math
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from vilgkit import artifacts
from vilgkit.engine import rng
from vilgkit.engine.batch import batch_size, move_to, sample_ids
from vilgkit.engine.checkpoint import (
    CheckpointError,
    CheckpointManager,
    DamagedCheckpointError,
    damaged_as_error,
    load_tensors,
    read_meta,
    verify,
)
from vilgkit.engine.compat import check_resume
from vilgkit.engine.config import TrainerConfig, validate_config
from vilgkit.engine.loader import StatefulLoader
from vilgkit.engine.muon import muon_factory, muon_param_groups
from vilgkit.engine.optim import adamw_factory, adamw_param_groups, normalize_groups
from vilgkit.engine.progress import RunLogger
from vilgkit.engine.schedule import build_scheduler
from vilgkit.errors import VilgkitError
from vilgkit.interfaces import ParallelStrategy, RunContext, Stage

FINAL_WEIGHTS = artifacts.FINAL_WEIGHTS


def _is_dtensor(tensor: torch.Tensor) -> bool:
    """A parameter sharded by FSDP2 (a ``DTensor``); none exists before ``torch.distributed.tensor`` is imported."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


class NonFiniteLossError(VilgkitError):
    """A loss or gradient norm was NaN/inf (policy ``stop``, or too many skipped with ``skip``)."""


class Callback(Protocol):
    """Runs every ``every`` steps with the module in eval mode, under ``no_grad``, RNG-neutral.

    Set ``main_only = False`` on callbacks that must run on every rank (e.g. sampling a sharded model).
    """

    every: int

    def __call__(self, step: int, module: nn.Module, out_dir: Path) -> None: ...


def default_strategy() -> ParallelStrategy:
    """``SingleDevice()`` looked up by name (core never imports plugins)."""
    from vilgkit.registry import PARALLEL_STRATEGIES

    cls = PARALLEL_STRATEGIES.get("SingleDevice") if "SingleDevice" in PARALLEL_STRATEGIES.module_dict else None
    if cls is None:
        raise VilgkitError(
            "no strategy in the recipe and the SingleDevice strategy (plugin vilgkit_parallel) is not loaded"
        )
    return cls()


def run_strategy(ctx: RunContext) -> ParallelStrategy:
    """The recipe's strategy (``SingleDevice`` when the recipe has none): what trains and builds the
    run's large modules (:meth:`~vilgkit.interfaces.ParallelStrategy.build_module`)."""
    return ctx.components["strategy"] if "strategy" in ctx.components else default_strategy()


class Trainer:
    """Trains a :class:`~vilgkit.interfaces.Trainable` module under a :class:`ParallelStrategy`.

    Args:
        module: an ``nn.Module`` implementing :class:`~vilgkit.interfaces.Trainable` (``forward(batch,
            group, step)``, ``training_losses(outputs, batch, group, step)``, ``optimizer_groups()``).
        dataset: map-style or iterable data set; batches come from a :class:`StatefulLoader`.
        out_dir: the stage folder (checkpoints, ``metrics.jsonl``, TensorBoard, final weights).
        strategy: wraps the module and does checkpoint I/O.
        config: the training settings.
        collate_fn: batches samples (``None``: PyTorch's default).
        callbacks: objects with ``every`` and ``__call__(step, module, out_dir)`` (see :class:`Callback`).
        recipe: the resolved recipe, stored in checkpoints and compared on resume.
        stage_name: this stage's name in ``recipe["stages"]`` (only its entry is compared).
        run_seed: the run's seed, combined with ``config.seed``.
        safe_resume_keys: extra dotted-key patterns that may change on resume.
        shuffle: permute the data each epoch.
        eval_dataset: held-out data for ``module.validation_metrics(batch)`` (logged as ``val/<key>``).
        eval_every: steps between evaluations (0: only at the end when ``eval_dataset`` is given).
        eval_batches: batches of ``eval_dataset`` per evaluation (always the same, in order).
        progress: show a progress bar.
        tensorboard: write TensorBoard scalars.
        rebuild: ``rebuild() -> nn.Module``, a fresh, unwrapped instance of ``module`` (same
            architecture, any weights). Needed when the strategy shards the module in place (FSDP2's
            DTensor parameters, FairScale's wrappers): main-rank callbacks and
            :meth:`trained_module` then work on such a copy holding the consolidated weights.
        export_parts: ``{state-dict prefix: file name}``: the final weights are written as one file
            per prefix (the prefix removed; every key must fall under one) instead of one
            ``model.safetensors`` — a generator stage's ``generator.safetensors`` and
            ``reconstructor.safetensors``, so that the run does not hold the same weights twice.
    """

    def __init__(
        self,
        module: nn.Module,
        dataset: Dataset,
        out_dir: str | Path,
        strategy: ParallelStrategy,
        config: TrainerConfig,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        callbacks: Sequence[Callback] = (),
        *,
        recipe: dict[str, Any] | None = None,
        stage_name: str | None = None,
        run_seed: int = 0,
        safe_resume_keys: Sequence[str] = (),
        shuffle: bool = True,
        eval_dataset: Dataset | None = None,
        eval_every: int = 0,
        eval_batches: int = 4,
        progress: bool = True,
        tensorboard: bool = True,
        rebuild: Callable[[], nn.Module] | None = None,
        export_parts: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(module, nn.Module) or not callable(getattr(module, "training_losses", None)):
            raise TypeError(f"Trainer needs an nn.Module implementing Trainable, got {type(module).__name__}")
        config = config if config is not None else TrainerConfig()
        if not isinstance(config, TrainerConfig):  # recipes deliver the dataclass (built by jsonargparse)
            raise TypeError(f"Trainer needs a TrainerConfig, got {type(config).__name__}")
        validate_config(config)
        self.module, self.dataset, self.strategy, self.config = module, dataset, strategy, config
        self.out_dir = Path(out_dir)
        self.collate_fn = collate_fn
        self.callbacks = list(callbacks)
        self.recipe, self.stage_name, self.run_seed = recipe, stage_name, run_seed
        self.safe_resume_keys = tuple(safe_resume_keys)
        self.shuffle, self.progress, self.tensorboard = shuffle, progress, tensorboard
        if eval_every < 0 or eval_batches < 1:
            raise VilgkitError(f"need eval_every >= 0 and eval_batches >= 1, got {eval_every}, {eval_batches}")
        if config.optimizer == "muon" and strategy.layout().sharding != "none":
            # Muon orthogonalises whole matrices; a sharded strategy hands each rank a slice
            raise VilgkitError(
                f"trainer.optimizer: muon needs whole weight matrices on every rank, but "
                f"{type(strategy).__name__} shards them; use optimizer: adamw with it, or a "
                "replicating strategy (SingleDevice, DDP)"
            )
        self.eval_dataset, self.eval_every, self.eval_batches = eval_dataset, eval_every, eval_batches
        self.seed = rng.derive_seed(run_seed, config.seed)
        self.step = 0
        self.counters: dict[str, int] = {"skipped_steps": 0, "samples": 0}
        self.metrics: dict[str, float] = {}
        self.rebuild = rebuild
        self.export_parts = dict(export_parts) if export_parts else None
        self._callback_copy: nn.Module | None = None
        self._warned_callbacks = False

    @classmethod
    def for_stage(
        cls, ctx: RunContext, stage: Stage, module: nn.Module, dataset: Dataset, config: TrainerConfig, **kwargs: Any
    ) -> Trainer:
        """A trainer writing into ``ctx.stage_dir(stage.name)`` with the recipe's strategy
        (``SingleDevice`` when the recipe has none), recipe and seed. Call ``.fit(ctx.resume)``."""
        strategy = run_strategy(ctx)
        kwargs.setdefault("recipe", ctx.recipe)
        kwargs.setdefault("stage_name", stage.name)
        kwargs.setdefault("run_seed", ctx.seed)
        return cls(module, dataset, ctx.stage_dir(stage.name), strategy, config, **kwargs)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def final_weights(self) -> Path:
        """Where the trained weights are exported (safetensors) when :meth:`fit` ends, without
        ``export_parts`` (see :attr:`final_files`)."""
        return self.out_dir / FINAL_WEIGHTS

    @property
    def final_files(self) -> dict[str, Path]:
        """``{state-dict prefix: file}`` the trained weights are exported to when :meth:`fit` ends
        (``{"": model.safetensors}`` without ``export_parts``)."""
        parts = self.export_parts or {"": FINAL_WEIGHTS}
        return {prefix: self.out_dir / name for prefix, name in parts.items()}

    def _check_parts(self, names: Sequence[str]) -> None:
        """Every state-dict key must land in one of the final files: none may be dropped silently."""
        lost = [n for n in names if not any(n.startswith(prefix) for prefix in self.final_files)]
        if lost:
            raise VilgkitError(
                f"{type(self.module).__name__}: {len(lost)} weight(s) fall under none of export_parts "
                f"{sorted(self.final_files)} (e.g. {lost[0]!r})"
            )

    # ================================================================== set-up
    def _setup(self) -> None:
        cfg, strategy = self.config, self.strategy
        strategy.setup()
        rng.seed_everything(self.seed + strategy.rank)
        self.model = strategy.wrap(self.module)
        self.module.train()
        self.device = strategy.device
        self.groups = normalize_groups(self.module.optimizer_groups())
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        for name, spec in self.groups.items():
            wd = spec.get("weight_decay", cfg.weight_decay)
            lr = spec.get("lr", cfg.lr)
            betas = spec.get("betas", cfg.betas)
            if cfg.optimizer == "muon":
                factory = muon_factory(lr=lr, betas=betas)
                param_groups = muon_param_groups(self.module, spec["params"], wd)
            else:
                factory = adamw_factory(lr=lr, betas=betas, weight_decay=wd)
                param_groups = adamw_param_groups(self.module, spec["params"], wd)
            self.optimizers[name] = strategy.build_optimizer(param_groups, factory)
            self.schedulers[name] = build_scheduler(
                self.optimizers[name],
                warmup_steps=cfg.warmup_steps,
                total_steps=cfg.steps,
                min_lr_ratio=cfg.min_lr_ratio,
            )
        self.loader = StatefulLoader(
            self.dataset,
            cfg.batch_size,
            self.collate_fn,
            seed=self.seed,
            shuffle=self.shuffle,
            num_workers=cfg.num_workers,
            rank=strategy.rank,
            world_size=strategy.world_size,
            pin_memory=self.device.type == "cuda",
            group_by_length=cfg.group_by_length,
        )
        self.ckpt = CheckpointManager(self.checkpoint_dir, strategy, keep=cfg.keep_checkpoints)

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizers": self.optimizers,
            "schedulers": self.schedulers,
            "trainer": {},
            "rng": {},
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "stage": self.stage_name,
            "config": dataclasses.asdict(self.config),
            "dataset": type(self.dataset).__name__,
        }

    # ================================================================== checkpoints
    def _save(self) -> Path:
        state = self._state()
        rng_data, rng_tensors = rng.capture()
        state["trainer"] = {
            "step": self.step,
            "counters": dict(self.counters),
            "loader": self.loader.state_dict(),
            "rng": rng_data,
            "metrics": self.metrics,
            "rank": self.strategy.rank,
        }
        state["rng"] = rng_tensors
        return self.ckpt.save(self.step, state, meta=self._meta())

    def _resume(self) -> Path | None:
        """Load the newest verified checkpoint (after checking the recipe); ``None`` if there is none.

        A damaged checkpoint (hash mismatch, truncated or unreadable files) is moved aside with a
        warning and the next-older one is used; when none is left after a damaged one, the stage
        stops with that error (run again to start it fresh). A recipe that does not fit stops it.
        """
        damaged: list[str] = []
        if self.strategy.is_main:
            self.ckpt.set_aside_incomplete()
        self.strategy.barrier()
        for _step, path in reversed(self.ckpt.complete()):
            try:
                verify(path)
                meta = read_meta(path)
                allowed = check_resume(
                    str(path),
                    meta.get("recipe"),
                    self.recipe,
                    meta.get("config", {}),
                    dataclasses.asdict(self.config),
                    stage_name=self.stage_name,
                    safe=self.safe_resume_keys,
                )
                if allowed and self.strategy.is_main:
                    print(f"vilgkit: resuming {path} with allowed changes: " + "; ".join(allowed))
                state = self._state()
                with damaged_as_error(path):
                    self.strategy.load_checkpoint(path, state)
                    trainer = state["trainer"]
                    step_loaded = int(trainer["step"])
                    counters, metrics, loader_state = (
                        trainer.get("counters", {}),
                        trainer.get("metrics", {}),
                        trainer["loader"],
                    )
                    rng_data = trainer["rng"]
            except DamagedCheckpointError as err:
                damaged.append(str(err))
                if self.strategy.is_main:  # every rank verified the same files: all move on to the older one
                    self.ckpt.set_aside(path, str(err).removeprefix(f"{path}: "))
                continue
            self.step = step_loaded
            self.counters.update(counters)
            self.metrics = dict(metrics)
            try:
                self.loader.load_state_dict(loader_state)
            except ValueError as err:
                raise CheckpointError(f"cannot resume from {path}: {err}") from None
            rng.restore(rng_data, state["rng"])
            return path
        if damaged:
            raise DamagedCheckpointError(
                f"{self.checkpoint_dir}: no usable checkpoint is left ({damaged[-1]}); the damaged ones were moved to "
                f"{self.checkpoint_dir / artifacts.DAMAGED_DIR}: run again to start this stage from its beginning"
            )
        return None

    def _export(self) -> None:
        if not self._intact() and self._stream_export():
            return
        weights = self.strategy.state_dict(self.model)
        if self.strategy.is_main:
            self._check_parts(list(weights))
            for prefix, path in self.final_files.items():
                part = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
                if part:
                    artifacts.save_weights(path, part, {"format": "pt", "step": str(self.step)})

    def _stream_export(self) -> bool:
        """A sharded module's final weights, streamed by the main rank from the final sharded
        checkpoint into :attr:`final_files` one tensor at a time (no rank gathers the whole model);
        the optimizer states and gradients are dropped first. False when the checkpoint is not a
        sharded (DCP) one."""
        from vilgkit import sharded

        latest = self.ckpt.latest()
        if latest is None or latest[0] != self.step or not (latest[1] / sharded.MARKER).is_file():
            return False
        self._release()
        if self.strategy.is_main:
            self._check_parts(list(sharded.module_tensors(latest[1], "model")))
            metadata = {"format": "pt", "step": str(self.step)}
            for prefix, path in self.final_files.items():  # stream_module writes each file atomically
                sharded.stream_module(latest[1], "model", path, prefix=prefix, metadata=metadata)
        return True

    # ================================================================== the loop
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``config.steps``; returns the last logged metrics (plus ``step``, counters).

        Args:
            resume: continue from the newest complete checkpoint of ``out_dir`` (a fresh start when
                there is none). Without it, existing checkpoints are an error (never overwritten).
        """
        cfg = self.config
        self._setup()
        resumed = None
        if resume:
            resumed = self._resume()
        elif self.ckpt.latest() is not None:
            step, path = self.ckpt.latest()
            raise VilgkitError(
                f"{self.out_dir} already has checkpoints (newest: step {step}); pass --resume to continue "
                "them, or use another run_dir to start over"
            )
        logger = RunLogger(
            self.out_dir,
            cfg.steps,
            self.step,
            enabled=self.strategy.is_main,
            tensorboard=self.tensorboard,
            progress=self.progress,
            name=self.stage_name or "train",
        )
        saved_at = self.step if resumed is not None else None
        try:
            window = (time.perf_counter(), 0)
            while self.step < cfg.steps:
                batches = [next(self.loader) for _ in range(cfg.grad_accum)]
                step_metrics = self._train_step(batches)
                self.step += 1
                samples = sum(batch_size(b) for b in batches) * self.strategy.world_size
                self.counters["samples"] += samples
                window = (window[0], window[1] + samples)
                logger.advance(self.step)
                window = self._report(logger, step_metrics, window)
                self._run_callbacks()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self._save()
                    saved_at = self.step
            if saved_at != self.step:
                self._save()
            self._export()
            self.strategy.barrier()  # the main rank has written the final files: every rank may read them
        finally:
            logger.close()
        return {**self.metrics, "step": self.step, **{k: float(v) for k, v in self.counters.items()}}

    def _report(
        self, logger: RunLogger, step_metrics: dict[str, float], window: tuple[float, int]
    ) -> tuple[float, int]:
        """Evaluate and log when due; returns the throughput window ``(start time, samples)``."""
        cfg, last = self.config, self.step == self.config.steps
        val: dict[str, float] = {}
        if self.eval_dataset is not None and ((self.eval_every and self.step % self.eval_every == 0) or last):
            t0 = time.perf_counter()
            val = self._evaluate()
            window = (window[0] + time.perf_counter() - t0, window[1])  # evaluation is not training throughput
        if self.step % cfg.log_every == 0 or last:
            elapsed = max(time.perf_counter() - window[0], 1e-9)
            self.metrics = {**step_metrics, **self._extras(), "samples_per_s": window[1] / elapsed, **val}
            logger.log(self.step, self.metrics)
            return time.perf_counter(), 0
        if val:
            self.metrics.update(val)
            logger.log(self.step, val)
        return window

    def _extras(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, opt in self.optimizers.items():
            key = "lr" if len(self.optimizers) == 1 else f"lr/{name}"
            out[key] = float(opt.param_groups[0]["lr"])
        out["epoch"] = self.loader.epoch + (
            self.loader.position / self.loader.batches_per_epoch if not self.loader.iterable else 0.0
        )
        out["skipped_steps"] = float(self.counters["skipped_steps"])
        out.update({f"data/{k}": float(v) for k, v in self.loader.counters().items()})
        stats = getattr(self.strategy, "memory_stats", None)
        if callable(stats):
            out.update(stats())
        return out

    # ================================================================== unsharded views
    def _intact(self) -> bool:
        """True when the user's module is still a plain module that one rank can run alone (single
        device, DDP); False when the strategy sharded it in place (FSDP2, FairScale)."""
        unwrap = getattr(self.strategy, "unwrap", None)
        inner = unwrap(self.model) if callable(unwrap) else self.model
        return inner is self.module and not any(_is_dtensor(p) for p in self.module.parameters())

    def _fresh(self, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A ``rebuild()`` copy on the strategy's device; with ``weights`` it is built on ``meta`` and
        takes them over (``assign``), so the host never holds the model twice."""
        if self.rebuild is None:
            raise VilgkitError(
                f"{type(self.strategy).__name__} shards {type(self.module).__name__} in place: give the "
                "Trainer rebuild= (a factory of an unwrapped copy) to use the trained module on one rank"
            )
        fresh = None
        if weights is not None:
            with torch.device("meta"):
                fresh = self.rebuild()
            fresh.load_state_dict(weights, strict=True, assign=True)
            if any(t.is_meta for t in (*fresh.parameters(), *fresh.buffers())):  # non-persistent buffers
                fresh = None
        if fresh is None:
            with rng.side_quest(self.module):  # building initialises weights: keep every random stream
                fresh = self.rebuild()
            if weights is not None:
                fresh.load_state_dict(weights, strict=True)
        return fresh.to(self.device).train(self.module.training)

    @property
    def sharded_in_place(self) -> bool:
        """After :meth:`fit`: whether the strategy sharded the module in place (FSDP2, FairScale),
        so that no rank can run it alone (see :meth:`trained_module` and :meth:`close`)."""
        return not self._intact()

    def trained_module(self) -> nn.Module:
        """After :meth:`fit`, on every rank: the trained module as a plain single-device module.

        That is the module itself when the strategy left it intact; otherwise a ``rebuild()`` copy
        on the strategy's device holding the consolidated weights that :meth:`fit` exported
        (:attr:`final_files`, written by the main rank before a barrier), so evaluation, sampling
        and saving work on one rank without collectives. That copy is the whole model on every
        rank: a stage whose module may be large frees the sharded one instead (:meth:`close`) and
        lets later stages read the exported files (docs/distributed.md).
        """
        if self._intact():
            return self.module
        self._release()  # training is over: free the optimizer states and gradients before the copy
        weights: dict[str, torch.Tensor] = {}
        for prefix, path in self.final_files.items():
            if path.is_file():
                weights.update({prefix + k: v for k, v in load_tensors(path).items()})
        return self._fresh(weights)

    def close(self) -> None:
        """After :meth:`fit`, once the trained weights are on disk: drop this rank's trained module
        (its shards under a sharding strategy), the optimizer states and the callbacks' copy, so a
        later stage starts without them. The trainer cannot train or export again."""
        if hasattr(self, "model"):
            self._release()
        self._callback_copy = None
        self.module = self.model = None  # type: ignore[assignment]
        gc.collect()  # FSDP's hooks hold the module in reference cycles

    def _release(self) -> None:
        """Drop what only training needs (optimizer states, schedules, gradients): after this the
        trainer cannot step again."""
        self.model.zero_grad(set_to_none=True)
        self.optimizers.clear()
        self.schedulers.clear()

    def _copy_fits(self) -> bool:
        """Collective, the same answer on every rank: whether the main rank's host has room now for
        the gathered weights and the plain copy they are loaded into (two fp32 copies of the module;
        :func:`vilgkit.recipe_plan.full_copy_fits`)."""
        from vilgkit.recipe_plan import full_copy_fits

        need = 2 * 4 * sum(p.numel() for p in self.module.parameters())  # a DTensor's numel is the global one
        ok = not self.strategy.is_main or full_copy_fits(need)
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        return bool(self.strategy.all_reduce_mean(flag).item() == 1.0)

    def _callback_module(self) -> nn.Module | None:
        """Collective: a plain copy with the current weights on the main rank (``None`` elsewhere)."""
        weights = self.strategy.state_dict(self.model)  # every rank takes part in the gather
        if not self.strategy.is_main:
            return None
        if self._callback_copy is None:
            self._callback_copy = self._fresh()
        self._callback_copy.load_state_dict(weights, strict=True)
        return self._callback_copy

    def _run_callbacks(self) -> None:
        due = [cb for cb in self.callbacks if int(getattr(cb, "every", 0) or 0) and not self.step % int(cb.every)]
        main_only = [cb for cb in due if getattr(cb, "main_only", True)]
        plain = self.module
        if main_only and not self._intact():
            # a sharded module runs on one rank only as a gathered copy, and only where it fits
            why = "the Trainer has no rebuild=" if self.rebuild is None else None
            if why is None and not self._copy_fits():
                why = "a full copy of the model does not fit the main rank's host memory now"
            if why is not None:  # skip, say so once
                if self.strategy.is_main and not self._warned_callbacks:
                    warnings.warn(f"callbacks skipped: the module is sharded and {why}", stacklevel=2)
                self._warned_callbacks = True
                due = [cb for cb in due if cb not in main_only]
            else:
                plain = self._callback_module()
        for cb in due:
            if getattr(cb, "main_only", True):
                if not self.strategy.is_main:
                    continue
                target = plain
            else:
                target = self.module
            with rng.side_quest(self.module):  # sampling draws random numbers: keep training's streams
                cb(self.step, target, self.out_dir)

    def _evaluate(self) -> dict[str, float]:
        """Mean ``validation_metrics`` over the first ``eval_batches`` held-out batches (RNG-neutral)."""
        loader = torch.utils.data.DataLoader(
            self.eval_dataset, batch_size=self.config.batch_size, collate_fn=self.collate_fn, shuffle=False
        )
        totals: dict[str, float] = defaultdict(float)
        count = 0
        dtype = torch.bfloat16 if self.config.precision == "bf16" else None
        with rng.side_quest(self.module), self.strategy.autocast(dtype):
            for batch in itertools.islice(loader, self.eval_batches):
                for key, value in self.module.validation_metrics(move_to(batch, self.device)).items():
                    totals[key] += float(value)
                count += 1
        values = torch.tensor([totals[k] / max(count, 1) for k in totals], device=self.device)
        values = self.strategy.all_reduce_mean(values).tolist() if len(totals) else []
        return {f"val/{k}": v for k, v in zip(totals, values)}

    def _train_step(self, batches: list[Any]) -> dict[str, float]:
        """One optimizer step of every group over the micro-batches; returns averaged metrics."""
        cfg, strategy = self.config, self.strategy
        dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        single = len(self.optimizers) == 1
        out: dict[str, float] = {}
        for name, opt in self.optimizers.items():
            prefix = "" if single else f"{name}/"
            self.model.zero_grad(set_to_none=True)  # the previous group's backward also reached these
            values: dict[str, list[torch.Tensor]] = defaultdict(list)
            for i, batch in enumerate(batches):
                sync = strategy.no_sync(self.model) if i < len(batches) - 1 else contextlib.nullcontext()
                with sync:
                    with strategy.autocast(dtype):
                        losses = self._call(name, move_to(batch, self.device))
                    if "loss" not in losses:
                        raise KeyError(
                            f"{type(self.module).__name__}.training_losses(..., group={name!r}) returned no "
                            "'loss' "
                            f"(keys: {sorted(losses)})"
                        )
                    (losses["loss"] / len(batches)).backward()
                for key, value in losses.items():
                    values[key].append(torch.as_tensor(value).detach().float().mean())
            params = self.groups[name]["params"]
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            norm = strategy.clip_grad_norm_(self.model, params, max_norm)  # sharded wrappers clip themselves
            loss_stack = torch.stack(values["loss"])
            finite = (torch.isfinite(loss_stack).all() & torch.isfinite(norm)).float().reshape(1)
            # one collective and one device-to-host transfer per group and step: the finiteness flag
            # (its mean is 1 only if every rank is finite) and the loss means, averaged over ranks
            keys = list(values)
            local = torch.cat([finite, torch.stack([torch.stack(values[k]).mean() for k in keys])]).to(self.device)
            summary = torch.cat([strategy.all_reduce_mean(local), norm.detach().float().reshape(1).to(self.device)])
            summary = summary.tolist()
            everywhere = summary[0] == 1.0
            means = dict(zip(keys, summary[1:-1]))
            if not everywhere:
                self._non_finite(name, batches, loss_stack, norm)
                self.model.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # stepping the schedule of an unstepped optimizer is intended
                    warnings.simplefilter("ignore")
                    self.schedulers[name].step()
                out[f"{prefix}skipped"] = 1.0
                continue
            opt.step()
            self.schedulers[name].step()
            out.update({f"{prefix}{k}": v for k, v in means.items()})
            out[f"{prefix}grad_norm"] = summary[-1]
        if not single:
            first = next(iter(self.optimizers))
            out.setdefault("loss", out.get(f"{first}/loss", math.nan))
        return out

    def _call(self, group: str, batch: Any) -> dict[str, torch.Tensor]:
        """The training pass through the wrapped model's call (DDP/FSDP hooks run), then the losses."""
        outputs = self.model(batch, group, self.step)
        return self.module.training_losses(outputs, batch, group, self.step)

    def _non_finite(self, group: str, batches: list[Any], losses: torch.Tensor, norm: torch.Tensor) -> None:
        bad = [i for i, ok in enumerate(torch.isfinite(losses).tolist()) if not ok]
        if bad:
            more = f" (and {len(bad) - 1} more micro-batch(es))" if len(bad) > 1 else ""
            what = f"loss {losses[bad[0]].item()} in micro-batch {bad[0]}{more}"
            samples = sample_ids(batches[bad[0]])
        else:
            what, samples = f"gradient norm {norm.item()} (losses finite; another rank or a bad gradient)", None
        where = f"step {self.step} (0-based), optimizer group {group!r}: non-finite {what}"
        if samples is not None:
            where += f"; batch samples {samples}"
        if self.config.nonfinite == "stop":
            raise NonFiniteLossError(
                where + ". No optimizer was stepped. (Set trainer.nonfinite: skip to skip such batches.)"
            )
        self.counters["skipped_steps"] += 1
        if self.strategy.is_main:
            warnings.warn(
                f"skipping: {where} [{self.counters['skipped_steps']}/{self.config.max_skipped}]", stacklevel=2
            )
        if self.counters["skipped_steps"] > self.config.max_skipped:
            raise NonFiniteLossError(f"{where}; more than max_skipped={self.config.max_skipped} skipped updates")
