"""``vilgkit plan RECIPE [--stage S] [--nodes N --gpus-per-node G --gpu-memory 80GiB --host-memory 1TiB] [--json]``.

Builds the recipe's models on ``meta`` (nothing is allocated), then prints, for one training stage
(the generator stage unless ``--stage`` names another, by its recipe name or class), parameters
per component, FLOPs per token, memory per rank on the device and on the host under the recipe's
strategy — and the same with recompute and offload switched —, the whole run's phases (build,
train, export, evaluate) and a verdict naming the resource that does not fit
(:mod:`vilgkit.recipe_plan`). ``--here`` plans against this machine, as ``vilgkit run`` does.
"""

from __future__ import annotations

import argparse
import json

from vilgkit import planning as P
from vilgkit import recipe_plan as R
from vilgkit.commands._recipe_args import add_recipe_arguments
from vilgkit.errors import VilgkitError

HELP = "parameters, FLOPs/token and memory per GPU/host for a recipe's strategy (no allocation)"
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--nodes", type=int, default=1, help="number of hosts (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (ranks) per host (default 8)")
    parser.add_argument("--gpu-memory", default="80GiB", help="memory per GPU (default 80GiB)")
    parser.add_argument(
        "--host-memory",
        default=None,
        help="memory per host, e.g. 1TiB (default: not checked)",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="the ranks compute on the CPU (device bytes are host bytes)",
    )
    parser.add_argument(
        "--here",
        action="store_true",
        help="plan against this machine and launch (as vilgkit run's pre-flight does)",
    )
    parser.add_argument(
        "--stage",
        default=None,
        help="the training stage to plan, by recipe name or class (default: the generator stage)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def render(report: R.PlanReport) -> str:
    hw = report.hardware
    out = [
        f"plan: {report.title}: stage {report.stage} trains the {report.component}, on {hw.describe()}",
        "",
    ]
    out.append("parameters")
    for key, cls, n in report.components:
        out.append(f"  {key:<16} {cls:<24} {n:>16,}  ({n / 1e9:.3f} B)")
    trained = report.trained_params
    out.append(f"  {'trained':<16} {'':<24} {trained:>16,}  ({trained / 1e9:.3f} B)")
    out.append("")
    out.append("compute")
    if report.tokens_per_sample:
        tokens = report.micro_batch * report.tokens_per_sample
        out.append(f"  tokens per sample      {report.tokens_per_sample} (text→image + image→text streams)")
        out.append(
            f"  micro-batch per rank   {report.micro_batch} samples = {tokens:,} tokens; grad_accum {report.grad_accum}"
        )
    else:
        out.append(f"  micro-batch per rank   {report.micro_batch} samples; grad_accum {report.grad_accum}")
    if report.keys_per_layer:
        k = report.keys_per_layer
        out.append(
            f"  keys per query         mean {sum(k) / len(k):.1f} (min {min(k):.1f}, max {max(k):.1f}) "
            f"over {len(k)} layers"
        )
    if report.flops:
        f = report.flops
        out.append(
            f"  FLOPs per token        forward {f['forward'] / 1e9:.2f} G; training {f['train'] / 1e9:.2f} G "
            f"({f['train_full_recompute'] / 1e9:.2f} G with full recompute); "
            f"attention {100 * f['attention_share']:.1f} % of forward"
        )
    out.append("")
    where = "CPU rank" if hw.device_type == "cpu" else "GPU"
    out.append(f"memory per {where} and per rank on the host (GiB)")
    out.append(
        f"  {'setting':<28} {'params':>8} {'grads':>8} {'optim':>8} {'activ.':>8} {'device':>8} {'host':>8}  fits"
    )
    for row in report.rows:
        p = row.plan
        out.append(
            f"  {row.label:<28} {P.gib(p.parameters):>8} {P.gib(p.gradients):>8} "
            f"{P.gib(p.optimizer_states):>8} {P.gib(p.activations):>8} {P.gib(p.device_total):>8} "
            f"{P.gib(row.host_per_rank):>8}  {'yes' if report.fits(row) else 'NO'}"
        )
    out.append("")
    out.append("the run's phases per rank (GiB), recipe setting")
    for phase in report.phases:
        line = f"  {phase.name:<10} host {P.gib(phase.host):>8}   device {P.gib(phase.device):>8}"
        if phase.host_others is not None:  # the main rank alone holds this phase's copy
            line += f"   (main rank; the others: host {P.gib(phase.host_others)})"
        out.append(line)
    out.append(f"  peak: {report.peak().name}")
    out.append("")
    first = report.rows[0]
    out.append(f"  layout: {first.plan.notes[0]}")
    for note in first.plan.notes[1:] + report.notes:
        out.append(f"  note: {note}")
    out.append("")
    short = report.shortfalls()
    if short:
        out.append(f"verdict: the recipe's setting does NOT fit: {'; '.join(short)}")
    else:
        peak = report.peak()
        where = "on the main rank" if peak.host_others is not None else "per rank"
        device = max(p.device for p in report.phases)  # the host peak's phase may not be the device's
        out.append(
            f"verdict: the recipe's setting fits ({P.gib(device)} GiB device at most, "
            f"{P.gib(peak.host)} GiB host {where} at the peak)"
        )
    return "\n".join(out)


def hardware_from_args(args: argparse.Namespace) -> R.Hardware:
    if args.here:
        return R.detect_hardware()
    try:
        gpu = P.parse_bytes(args.gpu_memory)
        host = P.parse_bytes(args.host_memory) if args.host_memory else None
    except ValueError as err:
        raise VilgkitError(str(err)) from None
    return R.Hardware(
        nodes=args.nodes,
        devices_per_node=args.gpus_per_node,
        device_memory=gpu,
        host_memory=host,
        device_type="cpu" if args.cpu else "cuda",
    )


def main(args: argparse.Namespace) -> int:
    from vilgkit.engine.runner import resolve

    recipe = resolve([args.recipe, *args.config], args.overrides)
    report = R.plan_recipe(recipe, hardware_from_args(args), stage=args.stage, title=args.recipe)
    print(json.dumps(report.to_json(), indent=1) if args.json else render(report))
    return 0
