"""The evaluation harness end to end on an oracle pipeline with known answers (no training needed)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import vilgkit_rerank  # noqa: F401
from vilgkit.data import ShapesDataset
from vilgkit.metrics import ShapesFeatureExtractor
from vilgkit.metrics.harness import SamplingSettings, evaluate
from vilgkit_rerank import NoReranker, SelfReranker


class _Oracle:
    """Duck-typed Pipeline: candidate 1 of every prompt is the true image, the others are blank;
    captions and answers are the references. Codes are ``[idx * N + j]`` so decoding can look up."""

    def __init__(self, dataset, n):
        self.items = [dataset[i] for i in range(len(dataset))]
        self.by_caption = {it["caption"]: i for i, it in enumerate(self.items)}
        self.n, self.device, self.max_text_len = n, torch.device("cpu"), 32
        self.matcher = None  # no TrainMatcher stage
        oracle = self

        class Gen:
            def text_log_likelihood(self, codes, ids, mask):
                return (codes.flatten(1)[:, 0] % oracle.n == 1).float()

            def generate_text(self, codes, max_length, question_ids=None, **kw):
                idx = codes.flatten(1)[:, 0].tolist()
                return [[i, 1] if question_ids is not None else [i] for i in idx]

        class ImageTok:
            def encode(self, images):
                return torch.tensor(
                    [[next(i for i, it in enumerate(oracle.items) if torch.equal(it["image"], im))] for im in images]
                ).view(-1, 1, 1)

        class TextTok:
            pad_id, bos_id, eos_id = 0, 2, 3

            def encode(self, texts):
                return [[5] for _ in texts]

            def decode(self, ids):
                return [oracle.items[r[0]]["answer" if len(r) == 2 else "caption"] for r in ids]

        self.generator, self.image_tokenizer, self.text_tokenizer = Gen(), ImageTok(), TextTok()

    def _max_length(self, max_length):
        return max_length or self.max_text_len

    def sample_codes(self, prompts, num_candidates, *, seed, **sampling):
        idx = torch.tensor([self.by_caption[p] for p in prompts])
        codes = (idx[:, None] * num_candidates + torch.arange(num_candidates)).view(-1, 1, 1)
        ids = torch.full((len(prompts), 3), 5)
        return codes, ids, torch.ones_like(ids, dtype=torch.bool)

    def check_reranker(self, reranker):
        """Every reranker the tests pass needs only the generator."""

    def decode_codes(self, codes, ids=None, mask=None):
        out = []
        for c in codes.flatten().tolist():
            idx, j = divmod(c, self.n)
            out.append(self.items[idx]["image"] if j == 1 else torch.full_like(self.items[0]["image"], -1.0))
        return torch.stack(out)


@pytest.fixture(scope="module")
def shapes_data():
    return ShapesDataset(split="test", size=6, image_size=64, languages=["zh"], seed=3, held_out=[])


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_harness_scores_reranks_records_and_reports(shapes_data, tmp_path):
    torch.manual_seed(0)
    ShapesFeatureExtractor(input_size=32, width=8, cell_dim=4).save(tmp_path / "feat")
    pipe = _Oracle(shapes_data, n=3)
    common = dict(
        metrics=["shapes", "vqa", "caption", "fid"],
        num_samples=6,
        batch_size=4,
        sampling=SamplingSettings(num_candidates=3, top_k=5),
        fid_weights=str(tmp_path / "feat"),
        report_examples=2,
        log=lambda s: None,
        seed=11,
    )
    record = evaluate(pipe, shapes_data, out_dir=tmp_path / "self", reranker=SelfReranker(), **common)
    m = record["metrics"]
    assert m["shapes_prompt_accuracy"] == 1.0  # self-reranking found the true image every time
    assert m["fid"] == pytest.approx(0.0, abs=1e-6)  # picked images are exactly the real ones
    assert m["shapes_caption_all_correct"] == 1.0 and m["vqa_exact_match"] == 1.0
    assert m["bleu4_zh"] == pytest.approx(1.0) and m["cider_zh"] > 1.0  # character-level, Chinese
    baseline = evaluate(pipe, shapes_data, out_dir=tmp_path / "none", reranker=NoReranker(), **common)["metrics"]
    assert baseline["shapes_prompt_accuracy"] == 0.0 and baseline["fid"] > 1e-3  # blank first candidates
    # The JSON has everything needed to reproduce the numbers.
    saved = json.loads((tmp_path / "self" / "eval.json").read_text())
    assert saved["metrics"] == m
    assert saved["sampling"]["num_candidates"] == 3 and saved["sampling"]["top_k"] == 5
    assert saved["seed"]["base"] == 11
    assert saved["reranker"]["class"].endswith("SelfReranker")
    assert saved["metric_settings"]["CaptionMetrics[zh]"]["mode"] == "char"
    assert saved["timing"]["rerank_s"] >= 0 and "rerank_fraction_of_generation" in saved["timing"]
    html = (tmp_path / "self" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 * 3 + 2 + 2  # 2 prompts × 3 candidates, 2 captions, 2 VQA
    assert 'class="best"' in html and shapes_data[0]["caption"] in html and "shapes_prompt_accuracy" in html


def test_harness_rejects_unknown_metric(shapes_data, tmp_path):
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(_Oracle(shapes_data, 1), shapes_data, metrics=["bleu"], out_dir=tmp_path)


def test_eval_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    from vilgkit.cli import main

    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--reranker", "bogus"]) == 2
    assert "unknown reranker 'bogus'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--metrics", "bleu"]) == 2
    assert "unknown metric" in capsys.readouterr().err
