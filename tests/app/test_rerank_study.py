"""``benchmarks/rerank_study.py`` on the tiny run with 3 scenes: every reranker and N in the JSON and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def test_rerank_study_on_a_tiny_run(matcher_run, tmp_path):
    tiny_run = matcher_run  # every reranker of the study, the matcher's too
    study = load_benchmark("rerank_study")
    out = tmp_path / "study"
    args = [str(tiny_run), str(tiny_run), "--k", "3", "--ns", "1,2,3", "--batch-size", "2", "--out", str(out)]
    assert study.main(args, log=lambda s: None) == 0
    record = json.loads((out / "rerank_study.json").read_text())
    assert record["ns"] == [1, 2, 3] and len(record["runs"]) == 2 and record["mean"]
    rows = record["runs"][0]["rows"]
    # the run's matcher reads codes, so pixel_matcher is left out (and only it)
    usable = [r for r in study.STUDY_RERANKERS if r != "pixel_matcher"]
    assert {(r["N"], r["reranker"]) for r in rows} == {(n, r) for n in (1, 2, 3) for r in usable}
    for r in rows:
        assert 0.0 <= r["first"] <= r["oracle"] <= 1.0 and r["reranked"] <= r["oracle"]
        assert 1 / r["N"] - 1e-6 <= r["distinct_share"] <= 1.0 and 0.0 <= r["code_difference"] <= 1.0
        assert r["rerank_s_per_image"] >= 0 and r["sampling_s_per_image"] > 0
        if r["N"] == 1:  # nothing to choose: the pick is the first candidate, reranking costs nothing
            assert r["reranked"] == r["first"] == r["oracle"] and r["rerank_s_per_image"] == 0
            assert r["gap_recovered"] is None and r["distinct_share"] == 1.0
    # oracle grows with N (nested candidate sets); the same run twice: the mean is that run
    oracle = [next(r["oracle"] for r in rows if r["N"] == n) for n in (1, 2, 3)]
    assert oracle == sorted(oracle)
    assert [m["reranked"] for m in record["mean"]] == pytest.approx([r["reranked"] for r in rows])
    table = (out / "rerank_study.md").read_text()
    assert "| N | reranker | first | reranked | oracle (any) | gap recovered |" in table
    assert "| 3 | pmi_shuffled |" in table and "mean of 2 runs" in table and "More candidates never" in table
    assert set(record["never_hurt"]) == set(usable)


def test_rerank_study_rejects_bad_arguments(tmp_path, capsys):
    study = load_benchmark("rerank_study")
    assert study.main([str(tmp_path / "missing"), "--k", "1"]) == 2
    assert "no trained run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main([str(tmp_path), "--rerankers", "nope"])


def test_rerank_study_takes_ensembles_of_its_rerankers(tmp_path):
    study = load_benchmark("rerank_study")
    assert study.parse_args([str(tmp_path), "--rerankers", "self,self+matcher"]).rerankers == ["self", "self+matcher"]
    with pytest.raises(SystemExit):
        study.parse_args([str(tmp_path), "--rerankers", "self+nope"])
