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
    "hsdp_2x1": dict(
        cls=FSDP,
        kw=dict(sharding="hybrid", shard_size=1, cpu_offload=True, activation_checkpointing="selective"),
        accum=2,
    ),
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


def meta_init(out: Path) -> dict:
    """A small UnifiedTransformer built by FSDP on meta (hybrid 1x2, offload, bf16 compute) against a
    CPU build from the same seed: consolidated weights and the RNG afterwards."""
    from vilgkit.models.unified import UnifiedTransformer
    from vilgkit.testing.tiny import tiny_generator_kwargs

    kw = tiny_generator_kwargs(text_vocab_size=50, num_heads=4, max_text_len=8)
    torch.manual_seed(7)
    reference = UnifiedTransformer(**kw).state_dict()
    rng_reference = torch.get_rng_state()
    strategy = FSDP(device="cpu", sharding="hybrid", shard_size=2, cpu_offload=True, param_dtype="bf16")
    strategy.setup()
    torch.manual_seed(7)
    model = strategy.build_module(lambda: UnifiedTransformer(**kw))
    on_meta = all(p.is_meta for p in model.parameters())
    rng_same = bool(torch.equal(torch.get_rng_state(), rng_reference))
    model = strategy.wrap(model)
    local = sum(p.to_local().numel() for p in model.parameters())
    full = strategy.state_dict(model)
    diff = max(float((full[k].float() - v.float()).abs().max()) for k, v in reference.items()) if full else None
    return {
        "on_meta": on_meta,
        "rng_same": rng_same,
        "max_abs_diff": diff,
        "keys_same": sorted(full) == sorted(reference) if full else None,
        "local_params": local,
        "params": sum(v.numel() for v in reference.values()),
    }


def main() -> None:
    out = Path(sys.argv[1])
    results = {}
    for name in sys.argv[2:]:
        if name == "save_resume":
            results[name] = save_resume(out)
        elif name == "resume":
            results[name] = resume(out)
        elif name == "meta_init":
            results[name] = meta_init(out)
        else:
            results[name] = run(name, out, steps=4)
    if dist.get_rank() == 0:
        world = dist.get_world_size()
        (out / f"results_w{world}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
