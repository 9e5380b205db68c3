"""A VQGAN tokenizer stage under FSDP with bf16 compute copies (the 10B recipe's strategy and
precision), one process on the CPU: taming's quantiser multiplies fp32 features with the codebook,
which must stay fp32 (before: ``expected m1 and m2 to have the same dtype … float != BFloat16``)."""

from __future__ import annotations

import json
import math

STRATEGY = (
    '{"class_path": "FSDP", "init_args": {"device": "cpu", "sharding": "hybrid", "cpu_offload": true, '
    '"param_dtype": "bf16", "activation_checkpointing": "full"}}'
)


def test_vqgan_stage_trains_under_fsdp_bf16(tmp_path, run_in_one_process):
    run = tmp_path / "run"
    rc = run_in_one_process(
        "recipes/tokenizers/vqgan_shapes.yaml",
        run,
        "--data.init_args.size",
        "4",
        "--strategy",
        STRATEGY,
        "--stages.0.init_args.trainer.steps",
        "2",
        "--stages.0.init_args.trainer.batch_size",
        "2",
        "--stages.0.init_args.trainer.precision",
        "bf16",
        "--stages.0.init_args.trainer.log_every",
        "1",
        "--stages.0.init_args.eval_images",
        "2",
        "--stages.0.init_args.min_detector_agreement",
        "0",
    )
    assert rc == 0
    lines = [json.loads(x) for x in (run / "train_tokenizer" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(math.isfinite(x["autoencoder/loss"]) for x in lines)
    assert (run / "train_tokenizer" / "image_tokenizer.safetensors").is_file()
