"""Under ``torchrun --nproc-per-node 2`` (CPU, gloo) the main rank alone writes the fitted text
tokenizer and the tokenized-data cache; the other rank waits for each at a barrier and loads it
(the main rank's writer and tokenizer are made slow on purpose). About 10 s on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vilgkit.testing.torchrun import run_torchrun

pytestmark = pytest.mark.distributed
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("single_writer")
    proc = run_torchrun(HERE / "single_writer_worker.py", out, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out / "run", [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_main_rank_alone_writes_the_tokenizer_and_every_rank_holds_it(ranks):
    run_dir, (main, other) = ranks
    assert main["writes"]["tokenizer"] == 1 and other["writes"]["tokenizer"] == 0
    assert main["vocab"] == other["vocab"] and main["encoded"] == other["encoded"]
    assert main["summary"] == other["summary"]  # rank 1 read rank 0's summary
    assert (run_dir / "fit_text_tokenizer" / "fit_summary.json").is_file()


def test_the_main_rank_alone_writes_the_tokenized_cache(ranks):
    run_dir, (main, other) = ranks
    assert main["writes"]["tokenized"] == 1 and other["writes"]["tokenized"] == 0
    assert main["tensors"] == other["tensors"]
    # only the main rank tokenized; the other read its file
    assert main["writes"]["tokenize_calls"] == 1 and other["writes"]["tokenize_calls"] == 0
    assert other["stats"]["cached"] is True and "cached" not in main["stats"]
    assert main["again"]["cached"] is True and other["again"]["cached"] is True  # a second call: no deadlock
    assert (run_dir / "train_generator" / "tokenized.safetensors").is_file()
    assert not list(run_dir.rglob("*.tmp"))  # written through a temporary name, then renamed
