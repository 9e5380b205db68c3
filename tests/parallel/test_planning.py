"""`vilgkit plan`, the memory arithmetic, safe state files and strategy argument checks (fast, 1 process)."""

from __future__ import annotations

import pytest
import torch

from vilgkit import planning as P
from vilgkit.registry import RECONSTRUCTORS


def _overrides() -> list[str]:
    # the reconstructor plugin may not be installed yet; planning does not need it
    return [] if "TwoStageReconstructor" in RECONSTRUCTORS.module_dict else ["--reconstructor", "null"]


@pytest.fixture(scope="module")
def report_10b():
    from vilgkit.engine.runner import resolve
    from vilgkit.recipe_plan import Hardware, plan_recipe

    recipe = resolve(["recipes/ernievilg_10b.yaml"], _overrides())
    return plan_recipe(recipe, Hardware(nodes=4, devices_per_node=8, device_memory=80 * P.GiB))


def test_10b_recipe_has_ten_billion_parameters(report_10b):
    gen = dict((k, n) for k, _, n in report_10b.components)["generator"]
    assert 9.5e9 <= gen <= 10.5e9
    # 48 blocks of 12 C^2 + 13 C parameters at C = 4096, plus embeddings and heads
    assert (
        gen - 48 * (12 * 4096**2 + 13 * 4096)
        == (21128 * 2 + 8192 * 2 + 64 + 2 * 32 + 4 + 1 + 2) * 4096  # bert-base-chinese: 21128 ids
    )


def test_10b_memory_arithmetic(report_10b):
    row = report_10b.rows[0]
    assert row.layout.sharding == "hybrid" and row.layout.cpu_offload and row.layout.recompute == "full"
    Pn = report_10b.trained_params
    assert row.plan.host_bytes == (4 + 4 + 8) * Pn // 8 * 8 or abs(row.plan.host_bytes - 16 * Pn) < 64
    assert row.plan.optimizer_states == 0  # offloaded
    assert row.plan.gradients >= 2 * Pn  # bf16 unsharded accumulation (grad_accum 8)
    assert report_10b.fits(row)
    ddp = next(r for r in report_10b.rows if r.label.startswith("unsharded"))
    assert not report_10b.fits(ddp)
    none = next(r for r in report_10b.rows if r.label == "recompute=none")
    assert none.plan.activations > 5 * row.plan.activations


def test_plan_cli_prints_verdict(capsys):
    from vilgkit.cli import main

    rc = main(
        [
            "plan",
            "recipes/ernievilg_lite_e2e.yaml",
            "--gpus-per-node",
            "2",
            "--gpu-memory",
            "24GiB",
            "--generator.init_args.num_layers",
            "2",
            *(["--reconstructor", "null"] if "EndToEndReconstructor" not in RECONSTRUCTORS.module_dict else []),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "FLOPs per token" in out and "verdict:" in out and "UnifiedTransformer" in out


def _plan_json(capsys, *args: str) -> dict:
    import json

    from vilgkit.cli import main

    assert main(["plan", "recipes/ernievilg_10b.yaml", *_overrides(), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


#: the 10B recipe uses a pre-trained VQGAN (no tokenizer stage); this overlay trains one from scratch
#: at the same architecture, so that a tokenizer stage can be planned beside the generator
TOKENIZER_TRAINING = """
image_tokenizer:
  class_path: VQGANTokenizer
  init_args: {codebook_size: 8192, code_dim: 256, z_channels: 256, ch: 128, ch_mult: [1, 1, 2, 4],
              num_res_blocks: 2, attn_resolutions: [32], resolution: 256, perceptual_weight: 0.0}
stages:
  - class_path: TrainTokenizer
    init_args:
      trainer: {steps: 100000, batch_size: 8, lr: 4.5e-6, warmup_steps: 1000, checkpoint_every: 2000}
  - class_path: TrainGenerator
    init_args:
      text_tokenizer_from: recipe
      trainer: {steps: 300000, batch_size: 4, grad_accum: 8, lr: 1.0e-4, warmup_steps: 2000, precision: bf16}
"""


@pytest.fixture(scope="module")
def tokenizer_overlay(tmp_path_factory):
    path = tmp_path_factory.mktemp("overlay") / "train_tokenizer.yaml"
    path.write_text(TOKENIZER_TRAINING)
    return str(path)


def test_tokenizer_stage_plans_the_tokenizer_by_recipe_name_or_class(capsys, tokenizer_overlay):
    by_name = _plan_json(capsys, "--config", tokenizer_overlay, "--stage", "train_tokenizer")
    by_class = _plan_json(capsys, "--config", tokenizer_overlay, "--stage", "TrainTokenizer")
    assert by_name["component"] == by_class["component"] == "image_tokenizer"
    assert by_name["params"] == by_class["params"] == 69_656_260  # the VQGAN, not the 9.98 B generator
    assert by_name["micro_batch"] == 8 and by_name["device_bytes_per_rank"] == by_class["device_bytes_per_rank"]
    generator = _plan_json(capsys)
    assert generator["stage"] == "train_generator" and generator["params"] == 9_906_974_720
    assert generator["micro_batch"] == 4 and generator["grad_accum"] == 8
    assert set(generator["phases"]) == {"build", "train", "export", "evaluate"}
    assert generator["device_bytes_per_rank"] == generator["phases"]["train"]["device_bytes_per_rank"]


def test_verdict_names_the_resource_that_does_not_fit(capsys):
    host = _plan_json(capsys, "--host-memory", "64GiB")
    assert not host["fits"] and len(host["does_not_fit"]) == 1 and host["does_not_fit"][0].startswith("host memory")
    gpu = _plan_json(capsys, "--gpu-memory", "16GiB", "--host-memory", "4TiB")
    assert not gpu["fits"] and gpu["does_not_fit"][0].startswith("GPU memory")
    assert _plan_json(capsys, "--host-memory", "4TiB")["fits"]


def test_unknown_stage_is_refused_with_the_choices(capsys, tokenizer_overlay):
    from vilgkit.cli import main

    assert (
        main(
            ["plan", "recipes/ernievilg_10b.yaml", "--config", tokenizer_overlay, *_overrides(), "--stage", "evaluate"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "train_tokenizer, train_generator" in err and len(err.strip().splitlines()) == 1


def test_run_refuses_the_10b_recipe_on_this_machine_before_building(tmp_path, capsys, monkeypatch, run_in_one_process):
    """``vilgkit run`` plans against the hardware it sees (here: one CPU process, this host's memory)."""
    from vilgkit import recipe_plan

    monkeypatch.setattr(recipe_plan, "host_memory_bytes", lambda: 64 * P.GiB)  # the same on every test machine
    run_dir = tmp_path / "run"
    rc = run_in_one_process("recipes/ernievilg_10b.yaml", run_dir, *_overrides(), "--strategy.init_args.device", "cpu")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "stage train_generator does not fit" in err and "host memory" in err and "--skip-preflight" in err
    assert not run_dir.exists()  # refused before anything was built or written


def test_parse_bytes():
    assert P.parse_bytes("80GiB") == 80 * 2**30
    assert P.parse_bytes("40GB") == 40 * 10**9
    assert P.parse_bytes("1.5TiB") == int(1.5 * 2**40)
    with pytest.raises(ValueError):
        P.parse_bytes("lots")


@pytest.mark.parametrize("qk_norm", [False, True])
def test_activation_formula_matches_saved_tensors(qk_norm):
    """The no-recompute per-token term equals the bytes autograd saves for a real pre-norm block
    (fused QKV, optional per-head QK-norm, SDPA, GELU MLP) in fp32, within the SDPA log-sum-exp and
    norm statistics."""
    import torch.nn.functional as F
    from torch import nn

    C, H, N = 64, 4, 32
    ln1, qkv, proj, ln2, fc1, fc2 = (
        nn.LayerNorm(C),
        nn.Linear(C, 3 * C),
        nn.Linear(C, C),
        nn.LayerNorm(C),
        nn.Linear(C, 4 * C),
        nn.Linear(4 * C, C),
    )
    q_norm, k_norm = nn.LayerNorm(C // H), nn.LayerNorm(C // H)
    x = torch.randn(1, N, C, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t):
        if t.requires_grad or t.grad_fn is not None or t.data_ptr() not in (p.data_ptr() for p in params):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = [p for m in (ln1, qkv, proj, ln2, fc1, fc2, q_norm, k_norm) for p in m.parameters()]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q, k, v = qkv(ln1(x)).view(1, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        if qk_norm:
            q, k = q_norm(q), k_norm(k)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, N, C)
        h = x + proj(a)
        out = h + fc2(F.gelu(fc1(ln2(h))))
    dims = P.ModelDims(
        hidden=C,
        layers=1,
        heads=H,
        mlp=4 * C,
        block_params=0,
        other_params=0,
        vocab=0,
        qk_norm=qk_norm,
    )
    estimate = P.activation_bytes(dims, N, "none", 4)["layers"]
    measured = sum(v for k, v in seen.items() if k not in {p.data_ptr() for p in params})
    assert out.shape == x.shape
    assert abs(estimate - measured) / measured < 0.2, (estimate, measured)
    if qk_norm:  # the norms' share is counted, not lost in the tolerance
        without = P.activation_bytes(P.ModelDims(**{**vars(dims), "qk_norm": False}), N, "none", 4)["layers"]
        assert abs(without - measured) > abs(estimate - measured)


def test_model_dims_reads_qk_norm():
    from vilgkit.models.unified import UnifiedTransformer
    from vilgkit.testing.tiny import tiny_generator_kwargs

    kw = tiny_generator_kwargs(text_vocab_size=64, image_vocab_size=16, num_heads=4, max_text_len=8)
    assert P.model_dims(UnifiedTransformer(**kw, qk_norm=True)).qk_norm
    assert not P.model_dims(UnifiedTransformer(**kw)).qk_norm


def test_safe_state_round_trip(tmp_path):
    import numpy as np

    from vilgkit_parallel import safe_state

    state = {
        "step": 3,
        "t": (1, "a"),
        "arr": np.arange(4, dtype=np.uint32),
        "x": torch.ones(2, 3),
        "ints": {1: 2.5},
        "b": b"\x00\x01",
        "nan": float("inf"),
    }
    safe_state.save(tmp_path / "s", state)
    back = safe_state.load(tmp_path / "s")
    assert back["step"] == 3 and back["t"] == (1, "a") and back["ints"] == {1: 2.5} and back["b"] == b"\x00\x01"
    assert np.array_equal(back["arr"], state["arr"]) and torch.equal(back["x"], state["x"])
    with pytest.raises(TypeError, match="state.obj"):
        safe_state.save(tmp_path / "bad", {"obj": object()})


def test_strategy_arguments_are_checked():
    from vilgkit_parallel import FSDP

    with pytest.raises(ValueError, match="sharding"):
        FSDP(device="cpu", sharding="zero3")
    with pytest.raises(ValueError, match="shard_size only applies"):
        FSDP(device="cpu", sharding="full", shard_size=2)
    with pytest.raises(ValueError, match="activation_checkpointing"):
        FSDP(device="cpu", activation_checkpointing="some")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fairscale_refuses_without_cuda(tmp_path):
    from vilgkit.errors import RecipeError
    from vilgkit_parallel import FairScaleFSDP
    from vilgkit_parallel.fairscale_fsdp import check_recipe

    with pytest.raises(RuntimeError, match="needs CUDA"):
        FairScaleFSDP()
    with pytest.raises(RecipeError, match="strategy.class_path: FairScaleFSDP needs CUDA"):
        check_recipe(
            {"strategy": {"class_path": "vilgkit_parallel.fairscale_fsdp.FairScaleFSDP"}},
            "r.yaml",
        )
