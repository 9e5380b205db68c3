"""`vilgkit tokenize` → CodeShardDataset: equivalence with on-the-fly tokenization, refusals."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from vilgkit.data import CodeShardDataset, ShapesDataset, TokenizerMismatchError, collate, write_code_shards
from vilgkit.data.code_shard_writer import TokenizeError
from vilgkit.stages.train_tokenizer import save_image_tokenizer
from vilgkit.testing.tiny import CPU_STRATEGY, generator_section
from vilgkit_text import WordPieceTokenizer

vq = pytest.importorskip("vilgkit_vq")

DATA = {"class_path": "ShapesDataset", "init_args": {"size": 20, "image_size": 32, "languages": ["en", "zh"]}}


def _image_tokenizer(seed: int = 0):
    torch.manual_seed(seed)
    return vq.VQVAETokenizer(**vq.VQVAETokenizer.conformance_args()).eval()


@pytest.fixture()
def tokenized(tmp_path):
    """A run dir with a 'trained' image tokenizer and a fitted text tokenizer, then `vilgkit tokenize`."""
    from vilgkit.cli import main as cli

    run_dir = tmp_path / "run"
    image_tok = _image_tokenizer()
    save_image_tokenizer(image_tok, run_dir / "train_tokenizer", {})
    text_tok = WordPieceTokenizer(
        vocab_size=300, corpus=list(ShapesDataset(size=50, languages=["en", "zh"]).iter_texts())
    )
    text_tok.save(run_dir / "fit_text_tokenizer")
    recipe = {
        "run_dir": str(run_dir),
        "data": DATA,
        "text_tokenizer": {"class_path": "WordPieceTokenizer", "init_args": {"vocab_size": 300}},
        "image_tokenizer": {"class_path": "VQVAETokenizer", "init_args": vq.VQVAETokenizer.conformance_args()},
        "stages": [{"class_path": "FitTextTokenizer"}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "codes"
    assert (
        cli(["tokenize", str(path), "--out", str(out), "--shard-size", "7", "--batch-size", "4", "--no-progress"]) == 0
    )
    return out, image_tok, text_tok


def test_shards_equal_on_the_fly_tokenization(tokenized):
    out, image_tok, text_tok = tokenized
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 20 and len(manifest["shards"]) == 3  # 7 + 7 + 6
    shards = CodeShardDataset(str(out), verify=True)
    raw = ShapesDataset(size=20, image_size=32, languages=["en", "zh"])
    assert len(shards) == 20
    with torch.no_grad():
        codes = image_tok.encode(torch.stack([raw[i]["image"] for i in range(20)]))
    for i in range(20):
        item, ref = shards[i], raw[i]
        assert torch.equal(item["codes"], codes[i])
        ids = text_tok.encode([ref["caption"]])[0]
        assert item["caption_ids"][: item["caption_len"]].tolist() == ids
        assert (item["caption_ids"][item["caption_len"] :] == text_tok.pad_id).all()
        assert item["answer_ids"][: item["answer_len"]].tolist() == text_tok.encode([ref["answer"]])[0]
        assert item["caption"] == ref["caption"] and item["scene"] == ref["scene"] and item["lang"] == ref["lang"]
    # batches that straddle shard boundaries stack
    batch = next(iter(DataLoader(shards, batch_size=10, collate_fn=collate)))
    assert batch["codes"].shape == (10, 8, 8) and batch["caption_ids"].shape[0] == 10


def test_training_from_shards_equals_training_from_raw(tokenized):
    """One optimiser step on a toy text→code model gives bit-identical weights from either source."""
    out, image_tok, text_tok = tokenized
    shards = CodeShardDataset(str(out))
    raw = ShapesDataset(size=20, image_size=32, languages=["en", "zh"])

    def step(codes, ids, lengths):
        torch.manual_seed(0)
        emb = torch.nn.EmbeddingBag(300, 16, mode="sum")
        head = torch.nn.Linear(16, image_tok.codebook_size * 64)
        opt = torch.optim.SGD([*emb.parameters(), *head.parameters()], lr=0.1)
        offsets = torch.cumsum(torch.tensor([0] + lengths[:-1]), 0)
        logits = head(emb(ids, offsets)).view(-1, image_tok.codebook_size, 8, 8)
        loss = torch.nn.functional.cross_entropy(logits, codes)
        loss.backward()
        opt.step()
        return loss.detach(), head.weight.detach().clone()

    batch = collate([shards[i] for i in range(8)])
    flat = torch.cat([batch["caption_ids"][i, :n] for i, n in enumerate(batch["caption_len"])])
    from_shards = step(batch["codes"], flat, list(batch["caption_len"]))
    raw_batch = collate([raw[i] for i in range(8)])
    with torch.no_grad():
        codes = image_tok.encode(raw_batch["image"])
    ids = text_tok.encode(raw_batch["caption"])
    from_raw = step(codes, torch.tensor([t for row in ids for t in row]), [len(r) for r in ids])
    assert torch.equal(from_shards[0], from_raw[0]) and torch.equal(from_shards[1], from_raw[1])


def test_mismatching_tokenizers_are_refused(tokenized):
    out, image_tok, text_tok = tokenized
    shards = CodeShardDataset(str(out))
    shards.check_tokenizers(image_tok, text_tok)  # the right ones pass
    other_text = WordPieceTokenizer(vocab_size=200, corpus=["a completely different corpus"])
    with pytest.raises(TokenizerMismatchError, match="text tokenizer"):
        shards.check_tokenizers(text_tokenizer=other_text)
    with pytest.raises(TokenizerMismatchError, match="image tokenizer"):
        shards.check_tokenizers(image_tokenizer=_image_tokenizer(seed=1))
    with pytest.raises(TokenizerMismatchError, match="vilgkit tokenize"):
        CodeShardDataset(str(out), expect_text_tokenizer=other_text.fingerprint())


def test_incomplete_or_tampered_shards(tokenized, tmp_path):
    out, image_tok, text_tok = tokenized
    (out / "shard-00001.safetensors").write_bytes((out / "shard-00001.safetensors").read_bytes()[:-8] + b"tampered")
    with pytest.raises(ValueError, match="checksum"):
        CodeShardDataset(str(out), verify=True)
    (out / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        CodeShardDataset(str(out))
    with pytest.raises(TokenizeError, match="add --resume"):  # the folder of an interrupted tokenize
        write_code_shards(ShapesDataset(size=2, image_size=32), image_tok, text_tok, out, progress=False)
    with pytest.raises(TokenizeError, match="size.*changed|data changed|units"):  # other data: no resume
        write_code_shards(ShapesDataset(size=2, image_size=32), image_tok, text_tok, out, progress=False, resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TokenizeError, match="not empty"):
        write_code_shards(ShapesDataset(size=2, image_size=32), image_tok, text_tok, tmp_path / "other", progress=False)


def test_fingerprint_covers_zero_dim_buffers():
    """Tokenizers keep step counters as 0-d buffers: they hash, and a changed counter changes the hash."""
    from vilgkit.data.code_shards import image_tokenizer_fingerprint

    class Tok(torch.nn.Module):
        codebook_size, downsample = 8, 4

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2, 3))
            self.register_buffer("step", torch.tensor(3))

    tok = Tok()
    before = image_tokenizer_fingerprint(tok)
    assert before == image_tokenizer_fingerprint(tok)
    tok.step.fill_(4)
    assert image_tokenizer_fingerprint(tok) != before


def test_vqa_shards_train_finetune_vqa(tokenized, tmp_path):
    """Shards of VQA data (Shapes: questions and answers) train the VQA direction; their question and
    answer ids are framed exactly as on-the-fly tokenization frames the texts."""
    from vilgkit.engine.runner import run
    from vilgkit.stages.generator_training import _raw_collate, tokenize_texts_batch
    from vilgkit.text_encoding import encode_texts

    out, _, text_tok = tokenized
    shards = CodeShardDataset(str(out))
    batch = _raw_collate([shards[i] for i in range(6)])
    framed, _ = tokenize_texts_batch(batch, text_tok, 24)
    for raw, prefix in (("question", "question"), ("answer", "answer")):
        ids, mask, _ = encode_texts(text_tok, batch[raw], 24, truncate=True)
        assert torch.equal(framed[f"{prefix}_ids"], ids) and torch.equal(framed[f"{prefix}_mask"], mask)
    run_dir = tmp_path / "run"
    recipe = {
        "run_dir": str(run_dir),
        "data": {"class_path": "CodeShardDataset", "init_args": {"path": str(out)}},
        "text_tokenizer": {"class_path": "WordPieceTokenizer", "init_args": {"vocab_size": 300}},
        "image_tokenizer": {"class_path": "VQVAETokenizer", "init_args": vq.VQVAETokenizer.conformance_args()},
        "generator": generator_section(max_text_len=40, max_image_grid=8),
        "strategy": CPU_STRATEGY,
        "stages": [
            {
                "class_path": "FinetuneVQA",
                "init_args": {
                    "generator_from": None,
                    "trainer": {"steps": 2, "batch_size": 4, "lr": 0.001, "log_every": 1},
                },
            }
        ],
    }
    path = tmp_path / "vqa.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run([str(path)])
    rows = [json.loads(x) for x in (run_dir / "finetune_vqa" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "vqa" in r] == [1, 2]
