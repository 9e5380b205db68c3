"""The Table 7 recipes and the ``vilgkit ablation`` command (on a seconds-long shrunk copy)."""

from __future__ import annotations

import json

import pytest
import yaml


def test_rows_share_the_base_stages_verbatim_and_parse(ablations_dir):
    from vilgkit.engine.runner import resolve

    base = yaml.safe_load((ablations_dir / "base.yaml").read_text())
    rows = sorted(ablations_dir.glob("row*.yaml"))
    assert [p.name[:4] for p in rows] == ["row1", "row2", "row3", "row4", "row5"]
    kinds = []
    for path in rows:
        row = yaml.safe_load(path.read_text())
        assert row["stages"][: len(base["stages"])] == base["stages"], (
            f"{path.name}: shared stages drifted from base.yaml"
        )
        recipe = resolve([str(ablations_dir / "base.yaml"), str(path)])
        assert recipe["image_tokenizer"]["class_path"].endswith("DVAETokenizer")  # the paper's dVAE
        last = recipe["stages"][-1]
        assert last["class_path"].endswith("EvaluateReconstruction")
        decode = (last["init_args"].get("reconstructor") or recipe["reconstructor"])["class_path"].rpartition(".")[2]
        kinds.append((last["init_args"]["source"], last["init_args"].get("generator_from"), decode))
    assert kinds == [
        ("generated", "train_generator_two_stage", "TwoStageReconstructor"),
        ("generated", "train_generator_end_to_end", "TwoStageReconstructor"),
        ("generated", "train_generator_end_to_end", "EndToEndReconstructor"),
        ("gold", None, "TwoStageReconstructor"),
        ("gold", "train_generator_end_to_end", "EndToEndReconstructor"),
    ]


@pytest.mark.slow
def test_ablation_command_writes_the_table_and_reuses_finished_stages(shrunk_ablations, tmp_path, capsys):
    from vilgkit.cli import main

    folder = shrunk_ablations
    assert main(["ablation", str(folder), "--rows", "4"]) == 0
    out = capsys.readouterr().out
    assert "| 4 | Gold image sequence | Two-stage R |" in out
    root = tmp_path / "ablations" / "run"
    record = json.loads((root / "ablation.json").read_text())
    row = record["rows"][0]
    m = row["metrics"]
    assert m["fid"]["mean"] >= 0 and 0 <= m["shapes_prompt_accuracy"]["mean"] <= 1 and "psnr" in m
    assert "| row | Generator | Reconstructor |" in (root / "ablation.md").read_text()
    weights = root / "row4" / "seed0" / "train_tokenizer" / "image_tokenizer.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert main(["ablation", str(folder), "--rows", "4"]) == 0  # everything reused: nothing retrains
    assert "running" not in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp
