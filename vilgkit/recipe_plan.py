"""Plan a recipe against hardware: what each training stage needs per rank, the whole run's peak,
and which resource does not fit. ``vilgkit plan`` prints it; ``vilgkit run`` checks it before
building anything (:func:`preflight`).

Every model is built on ``meta`` (nothing is allocated). A stage declares the component it trains
(:attr:`vilgkit.interfaces.Stage.trains`): generator stages plan the generator, tokenizer stages
the image tokenizer, each with its own trainer's batch size. Per rank:

* **device** bytes: :func:`vilgkit.planning.estimate_memory` (parameters, gradients, optimizer
  states, activations) — on a CPU machine the device *is* the host, so they count as host bytes;
* **host** bytes: the process itself (measured: this process's resident memory after importing
  torch and the plugins, plus :data:`vilgkit.planning.RANK_RUNTIME_BYTES`, what a training rank
  adds to that before its model is wrapped), the state CPU offload keeps on the host (its share per rank), the frozen
  models a stage holds on every rank (the image tokenizer of a generator stage), and on a CPU
  machine the device bytes.

Phases of the run (each rank's peak is the largest): ``build`` (on ``meta`` under a sharding
strategy, else a full fp32 copy per rank), ``train``, ``export`` (shards streamed into safetensors:
the largest tensor, twice) and ``evaluate``: on the main rank the evaluation's load of the saved
generator (built, then its file read), while the other ranks hold only their process — a sharding
strategy's ranks free their shards after training (:meth:`vilgkit.engine.trainer.Trainer.close`);
an unsharded module stays on every rank's device. When it happens, the stages check the main
rank's copy against the memory the host has then (:func:`full_copy_fits`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from vilgkit import planning as P
from vilgkit.errors import VilgkitError
from vilgkit.interfaces import MemoryPlan, StrategyLayout
from vilgkit.interfaces.stage import stage_name

#: stage classes without a ``trains`` attribute that still train the generator (third-party stages
#: built on the generator stages inherit it; this is the fallback for those that do not)
DEFAULT_COMPONENT = "generator"


@dataclass(frozen=True)
class Hardware:
    """What the plan is checked against.

    Attributes:
        nodes: hosts.
        devices_per_node: ranks per host (GPUs, or processes on a CPU machine).
        device_memory: bytes per device (ignored when ``device_type`` is ``"cpu"``).
        host_memory: bytes per host (``None``: not checked).
        device_type: ``"cuda"`` or ``"cpu"`` (on the CPU, device bytes are host bytes).
    """

    nodes: int = 1
    devices_per_node: int = 8
    device_memory: int = 80 * P.GiB
    host_memory: int | None = None
    device_type: str = "cuda"

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices_per_node

    def describe(self) -> str:
        what = "CPU process(es)" if self.device_type == "cpu" else "GPU(s)"
        out = f"{self.nodes} node(s) x {self.devices_per_node} {what}"
        if self.device_type != "cpu":
            out += f", {P.gib(self.device_memory)} GiB per GPU"
        if self.host_memory:
            out += f", {P.gib(self.host_memory)} GiB per host"
        return out


def host_memory_bytes() -> int:
    """Physical memory of this host."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_host_bytes() -> int:
    """Memory this host can hand out now (``MemAvailable``; the physical memory where it is unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return host_memory_bytes()


#: the share of the host's available memory a main-rank full copy may take (the rest: page cache
#: the other ranks and the file reads need, and the estimate's own slack)
FULL_COPY_SHARE = 0.9


def full_copy_fits(nbytes: int) -> bool:
    """The ``evaluate`` phase's check, made when it happens: whether ``nbytes`` more (a plain copy of
    a trained model on the main rank, with what loading it holds at the same time) fit this host's
    available memory now. The stages ask it before a main-rank copy of a sharded model."""
    return nbytes <= FULL_COPY_SHARE * available_host_bytes()


def process_bytes() -> int:
    """This process's resident memory now (the baseline every rank pays: Python, torch, plugins)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak so far is the best available figure
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def detect_hardware(strategy_device: str | None = None) -> Hardware:
    """The hardware this launch sees: torchrun's world, CUDA devices and their memory, host memory."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    nodes = max(1, world // max(1, local))
    cuda = torch.cuda.is_available() and strategy_device not in ("cpu",)
    memory = torch.cuda.get_device_properties(0).total_memory if cuda else host_memory_bytes()
    return Hardware(
        nodes=nodes,
        devices_per_node=max(1, local),
        device_memory=memory,
        host_memory=host_memory_bytes(),
        device_type="cuda" if cuda else "cpu",
    )


@dataclass
class Phase:
    """Bytes per rank during one phase of the run.

    Attributes:
        name: ``build``, ``train``, ``export`` or ``evaluate``.
        host: host bytes of the busiest rank (the main rank where the ranks differ).
        device: device bytes of that rank.
        host_others: host bytes of each other rank when they differ from ``host`` (``None``: the same).
    """

    name: str
    host: int
    device: int
    host_others: int | None = None

    def host_per_host(self, ranks: int) -> int:
        """Host bytes of ``ranks`` ranks on one host, the busiest among them."""
        others = self.host if self.host_others is None else self.host_others
        return self.host + (ranks - 1) * others


@dataclass
class PlanRow:
    label: str
    layout: StrategyLayout
    plan: MemoryPlan
    host_per_rank: int = 0  # everything this rank keeps in host memory (see the module docstring)


@dataclass
class PlanReport:
    """Everything ``vilgkit plan`` prints (and ``--json`` writes) for one training stage."""

    title: str
    stage: str
    component: str
    hardware: Hardware
    components: list[tuple[str, str, int]]
    trained_params: int
    micro_batch: int
    grad_accum: int
    tokens_per_sample: int = 0
    flops: dict[str, float] = field(default_factory=dict)
    keys_per_layer: list[float] = field(default_factory=list)
    rows: list[PlanRow] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def shortfalls(self, row: PlanRow | None = None, phases: bool = True) -> list[str]:
        """What does not fit, one phrase per resource (empty: it fits)."""
        row = row or self.rows[0]
        hw, n = self.hardware, self.hardware.devices_per_node
        checked = self.phases if phases and row is self.rows[0] else []
        device = max([row.plan.device_total] + [p.device for p in checked])
        # the busiest host: every rank at the row's training bytes, or a phase (its main rank may differ)
        host = max([Phase("train", row.host_per_rank, 0)] + checked, key=lambda p: p.host_per_host(n))
        out = []
        if hw.device_type != "cpu" and device > hw.device_memory:
            out.append(f"GPU memory: {P.gib(device)} GiB per GPU needed, {P.gib(hw.device_memory)} GiB per GPU")
        if hw.host_memory is not None and host.host_per_host(n) > hw.host_memory:
            ranks = (
                f"{n} rank(s) x {P.gib(host.host)} GiB"
                if host.host_others is None or n == 1
                else f"the main rank {P.gib(host.host)} GiB + {n - 1} x {P.gib(host.host_others)} GiB"
            )
            out.append(
                f"host memory: {P.gib(host.host_per_host(n))} GiB per host needed "
                f"({ranks}), {P.gib(hw.host_memory)} GiB per host"
            )
        return out

    def fits(self, row: PlanRow | None = None) -> bool:
        return not self.shortfalls(row, phases=row is None or row is self.rows[0])

    def peak(self) -> Phase:
        """The largest phase per rank (host bytes first)."""
        return max(self.phases, key=lambda p: (p.host, p.device))

    def to_json(self) -> dict[str, Any]:
        first = self.rows[0]
        return {
            "stage": self.stage,
            "component": self.component,
            "hardware": dataclasses.asdict(self.hardware),
            "params": next(
                (n for k, _, n in self.components if k == self.component),
                self.trained_params,
            ),
            "trained_params": self.trained_params,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "layout": dataclasses.asdict(first.layout),
            "host_bytes_per_rank": first.host_per_rank,
            "device_bytes_per_rank": first.plan.device_total,
            "memory": {
                "parameters": first.plan.parameters,
                "gradients": first.plan.gradients,
                "optimizer_states": first.plan.optimizer_states,
                "activations": first.plan.activations,
                "offloaded_per_rank": first.plan.host_bytes // max(1, self.hardware.devices_per_node),
            },
            "phases": {
                p.name: {
                    "host_bytes_per_rank": p.host,
                    "device_bytes_per_rank": p.device,
                    **({} if p.host_others is None else {"host_bytes_other_ranks": p.host_others}),
                }
                for p in self.phases
            },
            "peak": {
                "phase": self.peak().name,
                "host_bytes_per_rank": self.peak().host,
                "device_bytes_per_rank": self.peak().device,
            },
            "fits": self.fits(),
            "does_not_fit": self.shortfalls(),
            "components": [{"key": k, "class": c, "params": n} for k, c, n in self.components],
            "rows": [
                {
                    "label": r.label,
                    "host_bytes_per_rank": r.host_per_rank,
                    "device_bytes_per_rank": r.plan.device_total,
                    "fits": self.fits(r),
                }
                for r in self.rows
            ],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- the recipe's parts


def training_stages(recipe: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """``(name, entry, component)`` for every stage of the recipe that trains something."""
    out = []
    for node in recipe.get("stages") or []:
        trains = _stage_class_attr(node, "trains")
        has_trainer = (node.get("init_args") or {}).get("trainer") is not None
        if trains is None and has_trainer:
            trains = DEFAULT_COMPONENT
        if trains is not None:
            out.append((stage_name(node), node, trains))
    return out


def _stage_class_attr(node: dict[str, Any], attr: str) -> Any:
    module, _, name = node["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return getattr(cls, attr, None)


def pick_stage(recipe: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any], str]:
    """The stage to plan: by its recipe name or class name; default the generator stage."""
    stages = training_stages(recipe)
    if not stages:
        raise VilgkitError("the recipe has no training stage to plan")
    if name is not None:
        for stage in stages:
            if name in (stage[0], stage[1]["class_path"].rsplit(".", 1)[-1]):
                return stage
        raise VilgkitError(
            f"--stage {name}: not a training stage of the recipe; choose from {', '.join(s[0] for s in stages)}"
        )
    return next((s for s in stages if s[2] == "generator"), stages[0])


def _build_on_meta(store: Any, key: str) -> tuple[Any, str | None]:
    try:  # a component that loads weights in its constructor warns that meta tensors ignore them
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return store.build(key), None
    except Exception as err:  # noqa: BLE001 — reported, planning goes on without it
        return None, f"{key}: not built on meta ({type(err).__name__}: {err})"


def strategy_layout(recipe: dict[str, Any], notes: list[str]) -> tuple[str, StrategyLayout]:
    """The recipe strategy's layout (read from its arguments when it cannot be built here)."""
    from vilgkit.recipe import build

    node = recipe.get("strategy")
    if node is None:
        return "SingleDevice (default)", StrategyLayout()
    name = node["class_path"].rsplit(".", 1)[-1]
    try:
        return name, build("strategy", node).layout()
    except RuntimeError as err:  # e.g. a CUDA-only strategy planned on a CPU machine
        module, _, attr = node["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        if callable(getattr(cls, "layout_for", None)):
            notes.append(f"strategy not constructed here ({err}); layout read from its arguments")
            return name, cls.layout_for(**(node.get("init_args") or {}))
        raise


def _param_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0


def _largest_tensor(module: Any) -> int:
    return max((p.numel() * 4 for p in module.parameters()), default=0)


# --------------------------------------------------------------------------- the plan


def plan_recipe(
    recipe: dict[str, Any],
    hardware: Hardware,
    stage: str | None = None,
    title: str = "",
) -> PlanReport:
    """Plan one training stage of a resolved recipe on ``hardware`` (nothing is allocated)."""
    from vilgkit.components import ComponentStore

    if hardware.nodes < 1 or hardware.devices_per_node < 1:
        raise VilgkitError("--nodes and --gpus-per-node must be >= 1")
    notes: list[str] = []
    name, node, key = pick_stage(recipe, stage)
    if recipe.get(key) is None:
        raise VilgkitError(f"stage {name} trains the recipe's {key}, which the recipe does not define")
    store = ComponentStore(recipe)
    built: dict[str, Any] = {}
    components = []
    parts = (key, "image_tokenizer", "reconstructor") if key == "generator" else (key,)
    for part in dict.fromkeys(parts):
        if recipe.get(part) is None:
            continue
        obj, err = _build_on_meta(store, part)
        if err:
            notes.append(err)
            continue
        built[part] = obj
        if isinstance(obj, torch.nn.Module):
            components.append((part, type(obj).__name__, P.count_parameters(obj)))
    model = built.get(key)
    if model is None:
        raise VilgkitError(f"plan needs the recipe's {key}; " + "; ".join(notes))
    trained = P.count_parameters(model, trainable_only=True)
    rec = built.get("reconstructor")
    if key == "generator" and rec is not None and getattr(rec, "end_to_end", False):
        trained += P.count_parameters(rec, trainable_only=True)
        notes.append("end-to-end: the reconstructor trains with the generator (its parameters are included)")
    trainer = (node.get("init_args") or {}).get("trainer") or {}
    micro, accum = int(trainer.get("batch_size", 1)), int(trainer.get("grad_accum", 1))
    image_size = (recipe.get("data") or {}).get("init_args", {}).get("image_size")
    report = PlanReport(
        title=title or name,
        stage=name,
        component=key,
        hardware=hardware,
        components=components,
        trained_params=trained,
        micro_batch=micro,
        grad_accum=accum,
        notes=notes,
    )
    if key == "generator":
        tokens = _generator_compute(report, model, built.get("image_tokenizer"), image_size)
        frozen = _param_bytes(built.get("image_tokenizer"))  # every rank encodes/decodes with it
    else:
        tokens, frozen = (
            micro,
            0,
        )  # a model without transformer dims: activations from its own estimate
        if not callable(getattr(model, "activation_bytes", None)):
            notes.append(f"{type(model).__name__} has no activation_bytes(): activations are not estimated")
    strategy, layout = strategy_layout(recipe, notes)
    report.title = title or f"{name} ({strategy})"
    baseline = process_bytes() + P.RANK_RUNTIME_BYTES  # this process, plus what a training rank adds to it
    for label, lay in _variants(strategy, layout):
        plan = _estimate(model, lay, tokens, hardware, accum, trained)
        host = baseline + frozen + plan.host_bytes // hardware.devices_per_node
        if hardware.device_type == "cpu":
            host += plan.device_total
        report.rows.append(PlanRow(label, lay, plan, host))
    report.phases = _phases(report, model, layout, baseline, frozen)
    return report


def _generator_compute(report: PlanReport, gen: Any, tok: Any, image_size: Any) -> int:
    """Fill the FLOPs of a generator; returns tokens per device per micro-batch."""
    from vilgkit.layout import Layout

    text_len = int(getattr(gen, "max_text_len", 64))
    if image_size and tok is not None:
        grid = int(image_size) // int(tok.downsample)
    else:
        grid = int(getattr(gen, "max_image_grid", 16))
    per_sample = 2 * (text_len + grid * grid)  # text→image and image→text streams of one sample
    dims = P.model_dims(gen)
    layouts = [
        Layout.text_to_image(text_len, grid, grid),
        Layout.image_to_text(grid, grid, text_len),
    ]
    keys = P.mean_keys_per_query(gen.attention, dims.layers, layouts) if getattr(gen, "attention", None) else []
    v_img, v_txt = (
        int(getattr(gen, "image_vocab_size", 0)),
        int(getattr(gen, "text_vocab_size", 0)),
    )
    head = 2 * dims.hidden * (grid * grid * v_img + (text_len - 1) * v_txt) / per_sample
    report.tokens_per_sample, report.keys_per_layer = per_sample, keys
    report.flops = P.flops_per_token(dims, keys, head)
    return report.micro_batch * per_sample


def _estimate(
    model: Any,
    layout: StrategyLayout,
    tokens: int,
    hw: Hardware,
    accum: int,
    trained: int,
) -> MemoryPlan:
    return P.estimate_memory(
        model,
        layout,
        tokens,
        nodes=hw.nodes,
        gpus_per_node=hw.devices_per_node,
        grad_accum=accum,
        trained_params=trained,
    )


def _variants(strategy: str, layout: StrategyLayout) -> list[tuple[str, StrategyLayout]]:
    out = [("recipe: " + strategy, layout)]
    if layout.sharding != "none":
        out.append(
            (
                "without offload" if layout.cpu_offload else "with offload",
                dataclasses.replace(layout, cpu_offload=not layout.cpu_offload),
            )
        )
    other = "none" if layout.recompute != "none" else "full"
    out.append((f"recompute={other}", dataclasses.replace(layout, recompute=other)))
    if layout.sharding != "none":
        out.append(
            (
                "no offload, no recompute",
                dataclasses.replace(layout, cpu_offload=False, recompute="none"),
            )
        )
        out.append(
            (
                "unsharded (DDP)",
                dataclasses.replace(layout, sharding="none", cpu_offload=False),
            )
        )
    return out


def _phases(report: PlanReport, model: Any, layout: StrategyLayout, baseline: int, frozen: int) -> list[Phase]:
    """Per-rank bytes of the run's phases for the planned component (see the module docstring)."""
    hw, train = report.hardware, report.rows[0]
    cpu = hw.device_type == "cpu"
    full = 4 * P.count_parameters(model)
    sharded = layout.sharding != "none"

    def phase(name: str, host: int, device: int, host_others: int | None = None) -> Phase:
        if cpu and host_others is not None:
            host_others += device
        return Phase(name, host + (device if cpu else 0), 0 if cpu else device, host_others)

    build = phase("build", baseline + (0 if sharded else full), 0)
    # After training a sharding strategy's ranks free their shards (Trainer.close): the weights are
    # on disk; a later generator stage builds on meta and fills its shards from the file. An
    # unsharded module stays on every rank's device. The main rank's evaluation loads the saved
    # generator (built, then its file read: two fp32 copies); the other ranks wait.
    kept = 0 if sharded else full
    evaluating = 2 * full if report.component == "generator" else 0
    evaluate = phase("evaluate", baseline + frozen + evaluating, kept, baseline + frozen if evaluating else None)
    export = phase("export", baseline + 2 * _largest_tensor(model), 0)
    return [
        build,
        Phase("train", train.host_per_rank, 0 if cpu else train.plan.device_total),
        export,
        evaluate,
    ]


# --------------------------------------------------------------------------- pre-flight


def preflight(recipe: dict[str, Any], stages: list[str], recipe_paths: str) -> None:
    """Refuse (one line) a run whose training stages do not fit the hardware this launch sees.

    Args:
        recipe: the resolved recipe.
        stages: names of the stages about to run.
        recipe_paths: the recipe files, for the message.
    """
    from vilgkit.engine.ranks import is_main_process

    strategy = recipe.get("strategy") or {}
    hardware = detect_hardware((strategy.get("init_args") or {}).get("device"))
    for name, _, component in training_stages(recipe):
        # a stage that builds its own model from its arguments (TrainMatcher) has none in the recipe to plan
        if name not in stages or recipe.get(component) is None:
            continue
        try:
            report = plan_recipe(recipe, hardware, stage=name)
        except VilgkitError as err:  # e.g. a component that cannot be built on meta: nothing to check
            if is_main_process():
                print(f"vilgkit: pre-flight: stage {name} not planned ({err})")
            continue
        short = report.shortfalls()
        if short:
            raise VilgkitError(
                f"{recipe_paths}: stage {name} does not fit this machine ({hardware.describe()}): "
                f"{'; '.join(short)} (peak in '{report.peak().name}'; details: vilgkit plan {recipe_paths} "
                f"--stage {name} --here); pass --skip-preflight to run anyway"
            )
