"""``vilgkit plan RECIPE [--nodes N --gpus-per-node G --gpu-memory 80GiB]``.

Builds the recipe's models on ``meta`` (nothing is allocated), then prints parameters per
component, FLOPs per token, and memory per GPU and per host under the recipe's strategy — and the
same with recompute and offload switched — with a verdict on whether it fits.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch

from vilgkit import planning as P
from vilgkit.errors import VilgkitError

HELP = "parameters, FLOPs/token and memory per GPU/host for a recipe's strategy (no allocation)"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--config", action="append", default=[], help="more recipe files, merged in order")
    parser.add_argument("--nodes", type=int, default=1, help="number of hosts (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per host (default 8)")
    parser.add_argument("--gpu-memory", default="80GiB", help="memory per GPU (default 80GiB)")
    parser.add_argument("--host-memory", default=None, help="memory per host, e.g. 1TiB (default: not checked)")
    parser.add_argument("--stage", default=None, help="the training stage to plan (default: the generator stage)")


def _trainer_stage(recipe: dict[str, Any], name: str | None) -> dict[str, Any]:
    stages = recipe.get("stages") or []
    def label(node):
        return (node.get("init_args") or {}).get("name") or node["class_path"].rsplit(".", 1)[-1]
    if name is not None:
        for node in stages:
            if name in (label(node), node["class_path"].rsplit(".", 1)[-1]):
                return node
        raise VilgkitError(f"no stage {name!r}; the recipe has {', '.join(label(n) for n in stages)}")
    for node in stages:
        if node["class_path"].endswith("TrainGenerator"):
            return node
    for node in stages:
        if (node.get("init_args") or {}).get("trainer"):
            return node
    raise VilgkitError("the recipe has no training stage to plan")


def _build_on_meta(store: Any, key: str) -> tuple[Any, str | None]:
    try:
        with torch.device("meta"):
            return store.build(key), None
    except Exception as err:  # noqa: BLE001 — reported, planning goes on without it
        return None, f"{key}: not built on meta ({type(err).__name__}: {err})"


def _strategy_layout(recipe: dict[str, Any], notes: list[str]) -> tuple[str, P.StrategyLayout]:
    from vilgkit.recipe import build

    node = recipe.get("strategy")
    if node is None:
        return "SingleDevice (default)", P.StrategyLayout()
    name = node["class_path"].rsplit(".", 1)[-1]
    try:
        return name, build("strategy", node).layout()
    except RuntimeError as err:  # e.g. a CUDA-only strategy planned on a CPU machine
        module, _, attr = node["class_path"].rpartition(".")
        import importlib

        cls = getattr(importlib.import_module(module), attr)
        if callable(getattr(cls, "layout_for", None)):
            notes.append(f"strategy not constructed here ({err}); layout read from its arguments")
            return name, cls.layout_for(**(node.get("init_args") or {}))
        raise


def plan_recipe(recipe: dict[str, Any], nodes: int, gpus_per_node: int, gpu_memory: int,
                host_memory: int | None = None, stage: str | None = None, title: str = "") -> P.PlanReport:
    """Build the report for a resolved recipe (see :mod:`vilgkit.planning`)."""
    from vilgkit.components import ComponentStore
    from vilgkit.layout import Layout

    if nodes < 1 or gpus_per_node < 1:
        raise VilgkitError("--nodes and --gpus-per-node must be >= 1")
    notes: list[str] = []
    store = ComponentStore(recipe)
    built: dict[str, Any] = {}
    components = []
    for key in ("generator", "image_tokenizer", "reconstructor"):
        if recipe.get(key) is None:
            continue
        obj, err = _build_on_meta(store, key)
        if err:
            notes.append(err)
            continue
        built[key] = obj
        if isinstance(obj, torch.nn.Module):
            components.append((key, type(obj).__name__, P.count_parameters(obj)))
    gen = built.get("generator")
    if gen is None:
        raise VilgkitError("plan needs the recipe's generator; " + "; ".join(notes))
    trained = P.count_parameters(gen, trainable_only=True)
    rec = built.get("reconstructor")
    if rec is not None and "EndToEnd" in type(rec).__name__:
        trained += P.count_parameters(rec, trainable_only=True)
        notes.append("end-to-end: the reconstructor trains with the generator (its parameters are included)")
    trainer = (_trainer_stage(recipe, stage).get("init_args") or {}).get("trainer") or {}
    micro, accum = int(trainer.get("batch_size", 1)), int(trainer.get("grad_accum", 1))
    text_len = int(getattr(gen, "max_text_len", 64))
    image_size = (recipe.get("data") or {}).get("init_args", {}).get("image_size")
    tok = built.get("image_tokenizer")
    grid = int(image_size) // int(tok.downsample) if image_size and tok is not None else int(getattr(gen, "max_image_grid", 16))
    per_sample = 2 * (text_len + grid * grid)  # text→image and image→text streams of one sample
    dims = P.model_dims(gen)
    layouts = [Layout.text_to_image(text_len, grid, grid), Layout.image_to_text(grid, grid, text_len)]
    keys = P.mean_keys_per_query(gen.attention, dims.layers, layouts) if getattr(gen, "attention", None) else []
    V_img, V_txt = int(getattr(gen, "image_vocab_size", 0)), int(getattr(gen, "text_vocab_size", 0))
    head = 2 * dims.hidden * (grid * grid * V_img + (text_len - 1) * V_txt) / per_sample
    flops = P.flops_per_token(dims, keys, head)
    name, layout = _strategy_layout(recipe, notes)
    report = P.PlanReport(title=title or name, components=components, trained_params=trained,
                          tokens_per_sample=per_sample, micro_batch=micro, grad_accum=accum, flops=flops,
                          keys_per_layer=keys, gpu_memory=gpu_memory, host_memory=host_memory, notes=notes)
    variants = [("recipe: " + name, layout)]
    if layout.sharding != "none":
        variants.append(("without offload" if layout.cpu_offload else "with offload",
                         dataclasses.replace(layout, cpu_offload=not layout.cpu_offload)))
    other = "none" if layout.recompute != "none" else "full"
    variants.append((f"recompute={other}", dataclasses.replace(layout, recompute=other)))
    if layout.sharding != "none":
        variants.append(("no offload, no recompute", dataclasses.replace(layout, cpu_offload=False, recompute="none")))
        variants.append(("unsharded (DDP)", dataclasses.replace(layout, sharding="none", cpu_offload=False)))
    for label, lay in variants:
        plan = P.estimate_memory(gen, lay, micro * per_sample, nodes=nodes, gpus_per_node=gpus_per_node,
                                 grad_accum=accum, trained_params=trained)
        report.rows.append(P.PlanRow(label, lay, plan))
    return report


def render(report: P.PlanReport, nodes: int, gpus_per_node: int) -> str:
    out = [f"plan: {report.title} on {nodes} node(s) x {gpus_per_node} GPU(s), "
           f"{P.gib(report.gpu_memory)} GiB per GPU" + (f", {P.gib(report.host_memory)} GiB per host" if report.host_memory else "")]
    out.append("")
    out.append("parameters")
    for key, cls, n in report.components:
        out.append(f"  {key:<16} {cls:<24} {n:>16,}  ({n / 1e9:.3f} B)")
    out.append(f"  {'trained':<16} {'':<24} {report.trained_params:>16,}  ({report.trained_params / 1e9:.3f} B)")
    out.append("")
    tokens = report.micro_batch * report.tokens_per_sample
    out.append("compute")
    out.append(f"  tokens per sample      {report.tokens_per_sample} (text→image + image→text streams)")
    out.append(f"  micro-batch per GPU    {report.micro_batch} samples = {tokens:,} tokens; grad_accum {report.grad_accum}")
    if report.keys_per_layer:
        k = report.keys_per_layer
        out.append(f"  keys per query         mean {sum(k) / len(k):.1f} (min {min(k):.1f}, max {max(k):.1f}) over {len(k)} layers")
    f = report.flops
    out.append(f"  FLOPs per token        forward {f['forward'] / 1e9:.2f} G; training {f['train'] / 1e9:.2f} G "
               f"({f['train_full_recompute'] / 1e9:.2f} G with full recompute); attention {100 * f['attention_share']:.1f} % of forward")
    out.append("")
    out.append("memory per GPU (GiB) and per host (GiB)")
    head = f"  {'setting':<28} {'params':>8} {'grads':>8} {'optim':>8} {'activ.':>8} {'GPU':>8} {'host':>8}  fits"
    out.append(head)
    for row in report.rows:
        p = row.plan
        out.append(f"  {row.label:<28} {P.gib(p.parameters):>8} {P.gib(p.gradients):>8} {P.gib(p.optimizer_states):>8} "
                   f"{P.gib(p.activations):>8} {P.gib(p.device_total):>8} {P.gib(p.host_bytes):>8}  "
                   f"{'yes' if report.fits(row) else 'NO'}")
    out.append("")
    first = report.rows[0]
    out.append(f"  layout: {first.plan.notes[0]}")
    for note in first.plan.notes[1:] + report.notes:
        out.append(f"  note: {note}")
    verdict = "fits" if report.fits(first) else "does NOT fit"
    out.append("")
    out.append(f"verdict: the recipe's setting {verdict} ({P.gib(first.plan.device_total)} of {P.gib(report.gpu_memory)} GiB per GPU)")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from vilgkit.engine.runner import resolve

    recipe = resolve([args.recipe, *args.config], args.overrides)
    try:
        gpu = P.parse_bytes(args.gpu_memory)
        host = P.parse_bytes(args.host_memory) if args.host_memory else None
    except ValueError as err:
        raise VilgkitError(str(err)) from None
    report = plan_recipe(recipe, args.nodes, args.gpus_per_node, gpu, host, stage=args.stage, title=args.recipe)
    print(render(report, args.nodes, args.gpus_per_node))
    return 0
