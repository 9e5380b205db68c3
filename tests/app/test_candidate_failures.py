"""``benchmarks/candidate_failures.py``: failure kinds on known detector outputs; a whole tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


RED_CIRCLE = ("circle", "red", "top left", "small")


def test_failure_kinds_from_the_detectors_lists():
    kind = load_benchmark("candidate_failures").failure_kind
    assert kind([RED_CIRCLE], [("square", "red", "top left", "small")]) == "shape"
    assert kind([RED_CIRCLE], [("circle", "red", "top left", "large")]) == "size"
    assert kind([RED_CIRCLE], [("square", "blue", "top left", "small")]) == "several attributes"
    assert kind([], [RED_CIRCLE]) == "extra object"
    assert kind([RED_CIRCLE], []) == "missing object"
    # two wrong objects, each wrong in colour only: one kind
    blue = ("star", "blue", "centre", "large")
    found = [("star", "green", "centre", "large"), ("circle", "white", "top left", "small")]
    assert kind([RED_CIRCLE, blue], found) == "color"


def test_candidate_failures_on_a_tiny_run(tiny_run, tmp_path):
    script = load_benchmark("candidate_failures")
    out = tmp_path / "diag"
    args = [str(tiny_run), "--k", "3", "--n", "2", "--batch-size", "2", "--out", str(out)]
    assert script.main(args, log=lambda s: None) == 0
    record = json.loads((out / "candidate_failures.json").read_text())
    run = record["runs"][0]
    assert run["candidates"] == 6 and 0 <= run["right"] <= 6
    assert sum(run["failures"].values()) == 6 - run["right"] and list(run["failures"]) == script.KINDS
    assert 0.0 <= run["caption_detector_agreement"] <= 1.0 and 0.0 <= run["round_trip_same_codes"] <= 1.0
    # the round trip split by the detector's verdict adds back up to the overall figure
    parts = [(run["right"], run["round_trip_given_right"]), (6 - run["right"], run["round_trip_given_wrong"])]
    assert sum(n * (v or 0.0) for n, v in parts) / 6 == pytest.approx(run["round_trip_same_codes"])
    assert "| run | candidates right |" in (out / "candidate_failures.md").read_text()
    assert script.main([str(tmp_path / "missing")]) == 2
