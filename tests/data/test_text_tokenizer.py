"""WordPieceTokenizer: fitting, CJK splitting, round trips, BERT vocab.txt, save/load, the stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vilgkit.data import ShapesDataset
from vilgkit.registry import TEXT_TOKENIZERS
from vilgkit_text import SPECIAL_TOKENS, WordPieceTokenizer


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return list(ShapesDataset(size=300, languages=["en", "zh"], seed=0).iter_texts())


@pytest.fixture(scope="module")
def fitted(corpus) -> WordPieceTokenizer:
    return WordPieceTokenizer(vocab_size=400, corpus=corpus)


def test_registered():
    assert TEXT_TOKENIZERS.get("WordPieceTokenizer") is WordPieceTokenizer
    tok = WordPieceTokenizer(**WordPieceTokenizer.conformance_args())
    assert not tok.is_fitted
    tok.fit(["a red circle at the top left", "左上角有一个大的红色圆形"])
    assert tok.vocab_size <= 128


def test_special_ids_and_limit(fitted):
    assert fitted.vocab()[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert (fitted.pad_id, fitted.unk_id, fitted.bos_id, fitted.eos_id, fitted.sep_id) == (0, 1, 2, 3, 4)
    assert fitted.vocab_size <= 400
    for limit in (60, 100):  # the trainer overshoots its target; the limit must still hold
        small = WordPieceTokenizer(
            vocab_size=limit, corpus=["a large red circle at the top left", "左上角有一个大的红色圆形"] * 5
        )
        assert small.vocab_size <= limit


def test_round_trip_both_languages(fitted):
    ds = ShapesDataset(size=200, languages=["en", "zh"], seed=9)  # other scenes than the fit corpus
    texts = list(ds.iter_texts())
    assert fitted.decode(fitted.encode(texts)) == texts
    assert all(0 <= i < fitted.vocab_size for row in fitted.encode(texts) for i in row)


def test_cjk_characters_are_single_tokens(fitted):
    assert fitted.tokenize(["左上角有一个大的红色圆形"])[0] == list("左上角有一个大的红色圆形")
    assert fitted.unk_id not in fitted.encode(["左上角有一个大的红色圆形"])[0]


def test_lowercasing_is_optional(corpus):
    lower = WordPieceTokenizer(vocab_size=400, corpus=corpus)
    assert lower.encode(["A LARGE Red circle"]) == lower.encode(["a large red circle"])
    cased = WordPieceTokenizer(vocab_size=400, lowercase=False, corpus=corpus)
    assert cased.encode(["Red"]) != cased.encode(["red"])
    assert cased.decode(cased.encode(["a red circle"])) == ["a red circle"]


def test_fit_is_deterministic(corpus, fitted):
    again = WordPieceTokenizer(vocab_size=400, corpus=corpus)
    assert again.vocab() == fitted.vocab() and again.fingerprint() == fitted.fingerprint()


def test_save_load_identical(tmp_path, fitted):
    fitted.save(tmp_path)
    assert (tmp_path / "vocab.txt").read_text().splitlines() == fitted.vocab()
    loaded = WordPieceTokenizer(vocab_size=400)
    assert not loaded.is_fitted
    loaded.load(tmp_path)
    texts = ["a small cyan star on the right", "右下角有一个小的青色星形", "unseen wording!"]
    assert loaded.encode(texts) == fitted.encode(texts)
    assert loaded.fingerprint() == fitted.fingerprint()
    cfg = tmp_path / "vilgkit_text_tokenizer.json"
    cfg.write_text(cfg.read_text().replace('"lowercase": true', '"lowercase": false'))
    with pytest.raises(ValueError, match="fingerprint"):
        WordPieceTokenizer(vocab_size=400).load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no saved WordPieceTokenizer"):
        WordPieceTokenizer().load(tmp_path / "nowhere")


def _write_bert_vocab(path: Path, extra: list[str] = ()) -> list[str]:
    tokens = [
        "[PAD]",
        "[unused1]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        ",",
        "。",
        "un",
        "##aff",
        "##able",
        "the",
        "cat",
        "##s",
        "左",
        "上",
        "角",
        "有",
        "猫",
        *extra,
    ]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return tokens


def test_bert_vocab_txt(tmp_path):
    tokens = _write_bert_vocab(tmp_path / "vocab.txt")
    tok = WordPieceTokenizer(vocab_size=100, vocab_file=str(tmp_path / "vocab.txt"))
    assert tok.vocab() == tokens  # ids are line numbers
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.sep_id) == (0, 2, 3, 4)
    assert tok.eos_id == tok.sep_id  # BERT has no [EOS]: eos reuses [SEP] (documented)
    assert tok.tokenize(["Unaffable cats", "左上角有猫。"]) == [
        ["un", "##aff", "##able", "cat", "##s"],
        list("左上角有猫。"),
    ]
    assert tok.encode(["dog"]) == [[tok.unk_id]]
    assert tok.decode(tok.encode(["the cats, un", "左上角 有猫。"])) == ["the cats, un", "左上角有猫。"]
    # documented: spaces next to CJK characters are dropped when decoding (BERT-Chinese style)
    assert tok.decode(tok.encode(["cats 猫"])) == ["cats猫"]
    with_eos = _write_bert_vocab(tmp_path / "v2.txt", extra=["[EOS]"])
    assert WordPieceTokenizer(vocab_size=100, vocab_file=str(tmp_path / "v2.txt")).eos_id == len(with_eos) - 1


def test_bad_vocab_files(tmp_path):
    (tmp_path / "nocls.txt").write_text("[PAD]\n[UNK]\n[SEP]\nword\n")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        WordPieceTokenizer(vocab_file=str(tmp_path / "nocls.txt"))
    _write_bert_vocab(tmp_path / "vocab.txt")
    with pytest.raises(ValueError, match="raise vocab_size"):
        WordPieceTokenizer(vocab_size=10, vocab_file=str(tmp_path / "vocab.txt"))
    (tmp_path / "dup.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nx\nx\n")
    with pytest.raises(ValueError, match="twice"):
        WordPieceTokenizer(vocab_file=str(tmp_path / "dup.txt"))
    with pytest.raises(FileNotFoundError):
        WordPieceTokenizer(vocab_file=str(tmp_path / "missing.txt"))


def test_bad_input():
    tok = WordPieceTokenizer(vocab_size=64)
    with pytest.raises(RuntimeError, match="fit"):
        tok.encode(["x"])
    with pytest.raises(ValueError, match="empty"):
        tok.fit(["", "  "])
    tok.fit(["a red circle"])
    with pytest.raises(TypeError, match="list"):
        tok.encode("a red circle")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([[tok.vocab_size + 5]])


def test_fit_stage_and_loader(tmp_path):
    from vilgkit.engine.runner import run
    from vilgkit.stages.fit_text_tokenizer import load_text_tokenizer

    recipe = {
        "run_dir": str(tmp_path / "run"),
        "data": {"class_path": "ShapesDataset", "init_args": {"size": 100, "languages": ["en", "zh"]}},
        "text_tokenizer": {"class_path": "WordPieceTokenizer", "init_args": {"vocab_size": 300}},
        "stages": [{"class_path": "FitTextTokenizer", "init_args": {"max_samples": 80}}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    ctx = run([str(path)])
    out = tmp_path / "run" / "fit_text_tokenizer"
    assert (out / "vocab.txt").is_file()
    fitted = ctx.components["text_tokenizer"]
    expected = WordPieceTokenizer(
        vocab_size=300, corpus=list(ShapesDataset(size=100, languages=["en", "zh"]).iter_texts(80))
    )
    assert fitted.fingerprint() == expected.fingerprint()
    ctx.components._cache.clear()
    loaded = load_text_tokenizer(ctx, "fit_text_tokenizer")
    assert loaded.fingerprint() == fitted.fingerprint() and ctx.components["text_tokenizer"] is loaded
    again = load_text_tokenizer(ctx, str(out))  # a plain path works as well
    assert again.fingerprint() == fitted.fingerprint()
