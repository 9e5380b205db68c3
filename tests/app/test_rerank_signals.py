"""``benchmarks/rerank_signals.py``: every signal and combination on the tiny run, and its code likelihoods."""

from __future__ import annotations

import json

import pytest
import torch

from tests.app.benchmark_scripts import load_benchmark


def test_rerank_signals_on_a_tiny_run(tiny_run, tmp_path):
    bench = load_benchmark("rerank_signals")
    out = tmp_path / "signals"
    args = [str(tiny_run), str(tiny_run), "--k", "4", "--n", "3", "--ns", "2,3", "--batch-size", "2"]
    assert bench.main(args + ["--bootstrap", "20", "--out", str(out)], log=lambda s: None) == 0
    record = json.loads((out / "rerank_signals.json").read_text())
    rows = record["runs"][0]["rows"]
    labels = bench.SIGNALS + bench.COMBINATIONS
    assert [(r["N"], r["signal"]) for r in rows] == [(n, label) for n in (2, 3) for label in labels]
    for r in rows:
        assert 0.0 <= r["first"] <= r["any"] <= 1.0 and r["reranked"] <= r["any"]
        halves = r["halves"]["first half"], r["halves"]["second half"]  # 2 prompts each: their mean is the whole
        assert (halves[0]["reranked"] + halves[1]["reranked"]) / 2 == pytest.approx(r["reranked"])
        if r["gap_recovered"] is not None:  # the interval is the bootstrap's, around the run's gap
            low, high = r["gap_interval_90"]
            assert low <= high
    # the same run twice: the mean is that run, and the table has both
    assert [m["reranked"] for m in record["mean"]] == pytest.approx([r["reranked"] for r in rows])
    table = (out / "rerank_signals.md").read_text()
    assert "| N | signal | first | reranked | any | gap recovered | first half | second half |" in table
    assert "| 3 | self+consensus |" in table and "mean of 2 runs" in table


def test_code_likelihoods_are_the_text_to_image_loss(tiny_run):
    """Unguided, the per-code log-likelihoods are minus the teacher-forced text→image loss; guidance 1 is the same."""
    from vilgkit import Pipeline

    bench = load_benchmark("rerank_signals")
    pipe = Pipeline.from_run_dir(tiny_run, device="cpu")
    codes, ids, mask = pipe.sample_codes(["a red circle", "a blue square"], 2, seed=3)
    ids, mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    per_code = bench.image_log_likelihoods(pipe.generator, codes, ids, mask, cfg_scale=1.0)
    with torch.no_grad():
        loss = pipe.generator({"text_ids": ids, "text_mask": mask, "codes": codes, "directions": ["txt2img"]})
    assert per_code["cond"].shape == codes.flatten(1).shape
    assert -per_code["cond"].mean() == pytest.approx(float(loss.losses["txt2img"]), rel=1e-5)
    torch.testing.assert_close(per_code["guided"], per_code["cond"])


def test_rerank_signals_rejects_bad_arguments(tmp_path, capsys):
    bench = load_benchmark("rerank_signals")
    assert bench.main([str(tmp_path / "missing"), "--k", "2"]) == 2
    assert "no trained run" in capsys.readouterr().err
    for bad in (["--combinations", "self+nope"], ["--ns", "1,4"], ["--n", "4", "--ns", "8"]):
        with pytest.raises(SystemExit):
            bench.parse_args([str(tmp_path), *bad])
