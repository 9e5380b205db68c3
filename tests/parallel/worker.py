"""Run by ``torchrun`` from the distributed tests: trains the toy model under a strategy and writes
the losses (and final weights) as JSON for the test process to compare with single-device training.

    torchrun --nproc-per-node 2 tests/parallel/worker.py OUT_DIR SCENARIO [SCENARIO ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import toy  # noqa: E402

from vilgkit_parallel import DDP, FSDP  # noqa: E402

SCENARIOS = {
    "fsdp_full": dict(cls=FSDP, kw=dict(sharding="full", cpu_offload=True, activation_checkpointing="full"), accum=2),
    "hsdp_2x1": dict(cls=FSDP, kw=dict(sharding="hybrid", shard_size=1, cpu_offload=True,
                                        activation_checkpointing="selective"), accum=2),
    "hsdp_1x2": dict(cls=FSDP, kw=dict(sharding="hybrid", shard_size=2, activation_checkpointing="full"), accum=2),
    "ddp": dict(cls=DDP, kw={}, accum=2),
    "fsdp_meta": dict(cls=FSDP, kw=dict(sharding="full"), accum=1, meta=True),
}


def full_weights(strategy, model) -> dict[str, list]:
    sd = strategy.state_dict(model)
    return {k: v.flatten().tolist() for k, v in sd.items()}


def run(name: str, out: Path, steps: int) -> dict:
    spec = SCENARIOS[name]
    strategy = spec["cls"](device="cpu", **spec["kw"])
    strategy.setup()
    if spec.get("meta"):
        model = strategy.build_module(toy.ToyModel)
    else:
        model = toy.make_model()
    wrapped = strategy.wrap(model)
    opt = strategy.build_optimizer(list(model.parameters()), toy.adamw)
    rank, world = strategy.rank, strategy.world_size
    losses = toy.train(wrapped, strategy, opt, range(steps), spec["accum"], rank, world)
    result = {"losses": losses, "mesh": list(getattr(strategy, "mesh_shape", lambda: (world,))())}
    if spec.get("meta"):
        result["finite"] = all(torch.isfinite(torch.tensor(v)).all() for v in full_weights(strategy, wrapped).values())
    return result


def save_resume(out: Path) -> dict:
    """Train 3 steps, save a sharded checkpoint, train 3 more (the reference continuation)."""
    strategy = FSDP(device="cpu", sharding="full", cpu_offload=True, activation_checkpointing="full")
    strategy.setup()
    model = strategy.wrap(toy.make_model())
    opt = strategy.build_optimizer(list(model.parameters()), toy.adamw)
    rank, world = strategy.rank, strategy.world_size
    first = toy.train(model, strategy, opt, range(3), 1, rank, world)
    extra = {"step": 3, "note": ("tuple", 1)}
    strategy.save_checkpoint(out / "ckpt" / "step_3", {"model": model, "optimizers": {"main": opt}, "trainer": extra})
    saved = full_weights(strategy, model)
    rest = toy.train(model, strategy, opt, range(3, 6), 1, rank, world)
    return {"losses": first + rest, "saved": saved, "final": full_weights(strategy, model)}


def resume(out: Path) -> dict:
    """Load the sharded checkpoint (any world size) and continue to step 6."""
    strategy = FSDP(device="cpu", sharding="full", cpu_offload=True)
    strategy.setup()
    model = strategy.wrap(toy.make_model(seed=123))  # different init: everything must come from the file
    opt = strategy.build_optimizer(list(model.parameters()), toy.adamw)
    trainer: dict = {}
    strategy.load_checkpoint(out / "ckpt" / "step_3", {"model": model, "optimizers": {"main": opt}, "trainer": trainer})
    rest = toy.train(model, strategy, opt, range(3, 6), 1, strategy.rank, strategy.world_size)
    return {"losses": rest, "trainer": repr(trainer), "final": full_weights(strategy, model)}


def recipe_10b(out: Path) -> dict:
    """The 10B recipe at full width (4096, 64 heads, sparse 11x11 schedule, 8192-code vocabulary)
    with one layer, one sample and a short stream (16 text ids, 8x8 codes; the 32x32 grid ran at
    ~140 s/step on the loaded 2-core CPU), through its own strategy (FSDP hybrid + CPU offload +
    full recompute + bf16 compute)."""
    import time

    from vilgkit.components import ComponentStore
    from vilgkit.engine.runner import resolve
    from vilgkit.recipe import build

    overrides = ["--generator.init_args.num_layers", "1", "--text_tokenizer.init_args.vocab_size", "1000",
                 "--reconstructor", "null", "--strategy.init_args.device", "cpu"]
    recipe = resolve(["recipes/ernievilg_10b.yaml"], overrides)
    strategy = build("strategy", recipe["strategy"])
    strategy.setup()
    store = ComponentStore(recipe)
    model = strategy.build_module(lambda: store.build("generator"))
    assert all(p.is_meta for p in model.parameters())
    model = strategy.wrap(model)
    opt = strategy.build_optimizer(list(model.parameters()), lambda p: torch.optim.AdamW(p, lr=1e-4))
    g = torch.Generator().manual_seed(strategy.rank)
    ids = torch.randint(5, 1000, (1, 16), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"text_ids": ids, "text_mask": torch.ones_like(ids, dtype=torch.bool),
             "codes": torch.randint(0, 8192, (1, 8, 8), generator=g)}
    losses, seconds = [], []
    for _ in range(2):
        t0 = time.perf_counter()
        loss = model(batch).losses["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(strategy.all_reduce_mean(loss.detach().float())))
    params = sum(p.numel() for p in model.parameters())
    return {"losses": losses, "seconds": seconds, "params": params, "mesh": list(strategy.mesh_shape()),
            "hidden": model.hidden_size, "heads": model.num_heads}


def main() -> None:
    out = Path(sys.argv[1])
    results = {}
    for name in sys.argv[2:]:
        if name == "save_resume":
            results[name] = save_resume(out)
        elif name == "resume":
            results[name] = resume(out)
        elif name == "recipe_10b":
            results[name] = recipe_10b(out)
        else:
            results[name] = run(name, out, steps=4)
    if dist.get_rank() == 0:
        world = dist.get_world_size()
        (out / f"results_w{world}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
