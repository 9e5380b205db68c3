"""``benchmarks/bench_rerank_cost.py`` on a whole tiny run: every piece timed, bf16 close to fp32."""

from __future__ import annotations

import re
from pathlib import Path

from tests.app.benchmark_scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def test_reranking_cost_pieces_on_a_tiny_run(tiny_run, capsys):
    load_benchmark("bench_rerank_cost").main([str(tiny_run), "--prompts", "3", "--candidates", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (.+?) \| ([0-9.]+) \| [0-9.]+ \|$", out, flags=re.M))
    assert set(rows) == {
        "sampling the 12 candidates",
        "decode, one batch",
        "decode, Pipeline.decode_codes",
        "self (fp32)",
        "self_bf16",
        "consensus distances",
        "self+consensus, Pipeline.rerank",
        "self_bf16+consensus, Pipeline.rerank",
    }
    assert float(rows["sampling the 12 candidates"]) > 0
    gap, same = re.search(r"max \|score difference\| ([0-9.]+) nats; same choice for ([0-9.]+)%", out).groups()
    assert 0 < float(gap) < 1.0 and 0 <= float(same) <= 100
