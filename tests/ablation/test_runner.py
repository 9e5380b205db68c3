"""``vilgkit ablation`` on a seconds-long recipe set: rows × seeds, stages shared and counted,
resuming, the table's wording, and one-line errors for bad sets."""

from __future__ import annotations

import json

import pytest
import yaml

from vilgkit.ablation import load_set
from vilgkit.ablation.table import markdown_table
from vilgkit.cli import main


def _ran(out: str, stage: str) -> int:
    return sum(1 for line in out.splitlines() if line.startswith("ablation:") and line.endswith(f"running {stage}"))


@pytest.mark.slow
def test_rows_times_seeds_share_stages_and_resume(tiny_set, capsys):
    root = tiny_set / "run"
    assert main(["ablation", str(tiny_set), "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    # the other three generator stages read the first one's tokenized data (same data, same tokenizer)
    assert err.count("train_generator: tokenizing:   0%") == 1
    # 2 rows × 2 seeds; the tokenizers are shared by all four pairs: trained once, copied three times
    assert _ran(out, "train_tokenizer") == 1 and _ran(out, "fit_text_tokenizer") == 1
    assert _ran(out, "train_generator") == 4 and _ran(out, "evaluate") == 4
    assert out.count("train_tokenizer copied from row1/seed0") == 3
    pairs = sorted(p.relative_to(root).as_posix() for p in root.glob("row*/seed*"))
    assert pairs == ["row1/seed0", "row1/seed1", "row2/seed0", "row2/seed1"]
    weights = [root / p / "train_tokenizer" / "image_tokenizer.safetensors" for p in pairs]
    assert len({w.read_bytes() for w in weights}) == 1  # one tokenizer, four copies
    record = json.loads((root / "ablation.json").read_text())
    assert [(r["row"], r["seeds"]) for r in record["rows"]] == [(1, [0, 1]), (2, [0, 1])]
    assert [s["stage"] for s in record["stages"]].count("train_tokenizer") == 1
    loss = record["rows"][0]["metrics"]["final_loss"]
    assert loss["values"][0] != loss["values"][1]  # the training seed reached the generator
    assert loss["low"] <= loss["mean"] <= loss["high"]
    assert "vqa_accuracy" in record["rows"][0]["metrics"] and "vqa_accuracy" not in record["rows"][1]["metrics"]
    table = (root / "ablation.md").read_text()
    assert "| 1 | low lr | 2 |" in table and "| high lr beats low lr | prompt accuracy ↑" in table

    assert main(["ablation", str(tiny_set)]) == 0  # resumed: every row × seed is finished
    assert "running" not in capsys.readouterr().out

    assert main(["ablation", str(tiny_set), "--rows", "1", "--seeds", "2"]) == 0  # one new seed of one row
    out = capsys.readouterr().out
    assert _ran(out, "train_generator") == 1 and _ran(out, "train_tokenizer") == 0
    assert "row 1 seed 2: train_tokenizer copied from" in out

    # seeds run elsewhere: seed 0's record merged into an invocation that runs only seed 1 in another
    # root gives the one-invocation table's numbers, with seed 0's taken from the record
    whole = record  # the first invocation's: both rows at seeds 0 and 1
    seed0 = {**whole, "rows": [{**r, "per_seed": {"0": r["per_seed"]["0"]}} for r in whole["rows"]]}
    (tiny_set / "seed0.json").write_text(json.dumps(seed0))
    other = tiny_set / "elsewhere"
    argv = ["ablation", str(tiny_set), "--seeds", "1", "--run-dir", str(other), "--merge", str(tiny_set / "seed0.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert _ran(out, "train_generator") == 2  # seed 1's two rows; seed 0 was not trained again
    assert not (other / "row1" / "seed0").exists()
    merged = json.loads((other / "ablation.json").read_text())
    assert merged["seeds"] == [0, 1] and merged["merged"][0]["pairs"] == [[1, 0], [2, 0]]
    for a, b in zip(merged["rows"], whole["rows"]):
        assert a["seeds"] == [0, 1]
        assert {k: v["values"] for k, v in a["metrics"].items()} == {k: v["values"] for k, v in b["metrics"].items()}
    assert f"Merged from `{tiny_set / 'seed0.json'}` (row/seed 1/0, 2/0;" in (other / "ablation.md").read_text()


def test_rows_that_change_only_the_generator_share_the_tokenizer_stages(tiny_set):
    from vilgkit.ablation import stage_fingerprints
    from vilgkit.engine.runner import resolve

    paths = [str(tiny_set / "base.yaml"), str(tiny_set / "row1_low_lr.yaml")]
    plain = stage_fingerprints(resolve(paths))
    wider = stage_fingerprints(resolve(paths, ["--generator.init_args.hidden_size", "32"]))
    other_seed = stage_fingerprints(resolve(paths, ["--seed", "1"]))
    same = [a[0] for a, b in zip(plain, wider) if a[1] == b[1]]
    assert same == ["fit_text_tokenizer", "train_tokenizer"]  # the generator and its evaluation differ
    assert all(a[1] != b[1] for a, b in zip(plain, other_seed))  # the seed is part of every stage's key


def test_fresh_copies_only_what_this_invocation_made(tmp_path):
    from vilgkit.ablation import MARKER, StageStore

    old = tmp_path / "row1" / "seed0" / "train_tokenizer"
    old.mkdir(parents=True)
    (old / MARKER).write_text(json.dumps({"fingerprint": "f", "seconds": 1.0}))
    here = tmp_path / "row2" / "seed0"
    assert StageStore(tmp_path)._elsewhere("train_tokenizer", "f", here) == old
    assert StageStore(tmp_path)._elsewhere("train_tokenizer", "g", here) is None  # other settings
    assert StageStore(tmp_path, fresh=True)._elsewhere("train_tokenizer", "f", here) is None


def _summary(mean, low, high, n=3):
    return {"values": [mean] * n, "mean": mean, "std": 0.01, "low": low, "high": high, "counts": None}


def test_the_table_ranks_only_what_the_intervals_separate():
    rows = [
        {"row": 1, "label": "a", "labels": {}, "seeds": [0, 1, 2], "per_seed": {},
         "metrics": {"shapes_prompt_accuracy": _summary(0.80, 0.76, 0.84), "fid": _summary(20.0, 18.0, 22.0)}},
        {"row": 2, "label": "b", "labels": {}, "seeds": [0, 1, 2], "per_seed": {},
         "metrics": {"shapes_prompt_accuracy": _summary(0.78, 0.74, 0.82), "fid": _summary(30.0, 28.0, 32.0)}},
        {"row": 3, "label": "c", "labels": {}, "seeds": [0, 1, 2], "per_seed": {},
         "metrics": {"shapes_prompt_accuracy": _summary(0.40, 0.35, 0.45), "fid": _summary(21.0, 19.0, 23.0)}},
    ]  # fmt: skip
    record = {
        "title": "t", "rows": rows, "seeds": [0, 1, 2], "shared_seed": 0, "shared_stages": [],
        "bootstrap": {"confidence": 0.95, "resamples": 100}, "stages": [], "machine": "m", "torch_threads": 1,
        "wall_seconds": 1.0, "load_average_start": [0, 0, 0], "load_average_end": [0, 0, 0], "command": "c",
        "claims": [{"claim": "a beats b", "better": 1, "worse": 2, "metrics": ["shapes_prompt_accuracy", "fid"]}],
    }  # fmt: skip
    table = markdown_table(record)
    assert (
        "prompt accuracy ↑: row 1 is best, its interval clear of row(s) 3; against row(s) 2 the order "
        "cannot be resolved at this size." in table
    )
    assert "FID ↓: row 1 is best, its interval clear of row(s) 2; against row(s) 3 the order cannot be" in table
    assert "| a beats b | prompt accuracy ↑ | 1: 0.800 ± 0.010 [0.760, 0.840] |" in table
    verdicts = [line.rsplit("|", 2)[1].strip() for line in table.splitlines() if line.startswith("| a beats b")]
    assert verdicts == ["**cannot be resolved at this size**", "**holds**"]


@pytest.mark.parametrize(
    ("settings", "args", "message"),
    [
        ({"seedz": [0]}, [], "unknown key(s) ['seedz']"),
        ({}, ["--seeds", "0,x"], "--seeds must be comma-separated integers"),
        ({}, ["--rows", "7"], "no row(s) [7]"),
        ({"claims": [{"claim": "c", "better": 1, "worse": 2, "metrics": ["bleu"]}]}, [], "unknown metric(s) ['bleu']"),
        ({"shared_stages": ["train_tokenizr"]}, [], "shared_stages ['train_tokenizr'] are stages of no row"),
        ({"shared_stages": ["evaluate"]}, [], "shared stage 'evaluate' comes after the per-seed stage"),
        ({}, ["--run_dir", "elsewhere"], "--run_dir is set by `vilgkit ablation` per seed"),
    ],
)
def test_bad_sets_are_one_line_errors(tiny_set, capsys, settings, args, message):
    (tiny_set / "ablation.yaml").write_text(yaml.safe_dump(settings))
    assert main(["ablation", str(tiny_set), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not an ablation.json record"),
        (
            '{"rows": [{"row": 1, "recipe": "recipes/ablations/sparse_dense/row1_dense.yaml", "per_seed": {}}]}',
            "its row 1 is sparse_dense/row1_dense.yaml; this set's row 1: ",
        ),
        ('{"rows": [{"row": 9, "recipe": "x/row9_x.yaml", "per_seed": {}}]}', "this set's row 9: no such row"),
    ],
)
def test_a_record_of_another_set_is_not_merged(tiny_set, tmp_path, capsys, content, message):
    (tmp_path / "other.json").write_text(content)
    assert main(["ablation", str(tiny_set), "--merge", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tiny_set / "run").exists()  # refused before anything ran


def test_shipped_sets_parse():
    from pathlib import Path

    from vilgkit.ablation.store import stage_name
    from vilgkit.engine.runner import resolve

    recipes = Path(__file__).resolve().parents[2] / "recipes" / "ablations"
    folders = [recipes, *sorted(p for p in recipes.iterdir() if (p / "base.yaml").is_file())]
    assert len(folders) == 4
    for folder in folders:
        aset = load_set(folder)
        assert aset.rows and aset.seeds
        base = {stage_name(n): n for n in yaml.safe_load(aset.base.read_text())["stages"]}
        assert set(aset.shared_stages) <= set(base)
        for _, path in aset.rows:
            row = yaml.safe_load(path.read_text())
            if "stages" in row:  # a row's list replaces the base's: the shared stages must not drift
                own = {stage_name(n): n for n in row["stages"]}
                for name in aset.shared_stages:
                    assert own.get(name) == base[name], f"{path}: shared stage {name} drifted from base.yaml"
            resolve([str(aset.base), str(path)])
        assert "How long" in aset.base.read_text() or folder == recipes
