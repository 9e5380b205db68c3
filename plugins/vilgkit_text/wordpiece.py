"""``WordPieceTokenizer``: BERT-style WordPiece through HF ``tokenizers`` (paper §3.1.2).

CJK-aware as BERT-Chinese is: the normaliser puts spaces around every CJK ideograph, so each
Chinese character is its own word and its own token. Two ways in: :meth:`fit` on a corpus
(vocabulary learned deterministically by :mod:`vilgkit_text.learn`), or a BERT ``vocab.txt`` (one
token per line, id = line number), e.g. bert-base-chinese's.

Special tokens. A trained vocabulary starts with ``[PAD]=0 [UNK]=1 [CLS]=2 [EOS]=3 [SEP]=4
[MASK]=5`` (bos is ``[CLS]``). A BERT ``vocab.txt`` has no end token: if it lacks ``[EOS]``,
**eos reuses ``[SEP]``** (BERT itself ends sequences with ``[SEP]``), and its ids are wherever the
file puts them (bert-base-chinese: pad 0, unk 100, cls 101, sep 102), so a generator must take its
special ids from the tokenizer (``pad_id``/``bos_id``/``eos_id``), not assume the defaults.

Decoding joins word pieces, removes the spaces that tokenisation put next to CJK characters and
CJK punctuation and before closing punctuation, so every Shapes text round-trips exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from vilgkit.interfaces import TextTokenizer
from vilgkit.registry import TEXT_TOKENIZERS
from vilgkit_text.learn import learn_wordpiece_vocab

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[EOS]", "[SEP]", "[MASK]")
REQUIRED_IN_VOCAB_FILE = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
CONFIG_FILE = "vilgkit_text_tokenizer.json"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"

# CJK ideographs, CJK punctuation (3000–303F) and full-width forms (FF00–FFEF)
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_SPACE_NEAR_CJK = re.compile(f"(?<=[{_CJK}]) +| +(?=[{_CJK}])")
_SPACE_BEFORE_CLOSE = re.compile(r" +(?=[.,!?;:)\]}%])")
_SPACE_AFTER_OPEN = re.compile(r"(?<=[(\[{]) +")


@TEXT_TOKENIZERS.register_module()
class WordPieceTokenizer(TextTokenizer):
    """WordPiece text tokenizer (BERT / BERT-Chinese style).

    Args:
        vocab_size: the maximum vocabulary size, special tokens included; a fitted or loaded
            vocabulary never exceeds it (the generator's text embedding is sized from it).
        lowercase: lower-case (and strip accents from) text before tokenising.
        vocab_file: a BERT-format ``vocab.txt`` to load now (otherwise call :meth:`fit` or :meth:`load`).
        min_frequency: minimum count of a merged piece when fitting.
        corpus: texts to fit on immediately (convenient in tests and notebooks).
        max_input_chars_per_word: longer words become ``[UNK]`` (BERT's default is 100).
    """

    #: a BERT ``vocab.txt`` is copied into the run (``external/``): it loads after the file moves
    EXTERNAL_FILES = ("vocab_file",)

    def __init__(
        self,
        vocab_size: int = 8000,
        lowercase: bool = True,
        vocab_file: str | None = None,
        min_frequency: int = 1,
        corpus: list[str] | None = None,
        max_input_chars_per_word: int = 100,
    ) -> None:
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 1}, got {vocab_size}")
        self.max_vocab_size = int(vocab_size)
        self.lowercase = bool(lowercase)
        self.min_frequency = int(min_frequency)
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self._tok: Tokenizer | None = None
        #: the published vocabulary this tokenizer was built from (``FitTextTokenizer`` keeps it as it is)
        self.vocab_file = str(vocab_file) if vocab_file is not None else None
        if vocab_file is not None and corpus is not None:
            raise ValueError("give either vocab_file or corpus, not both")
        if vocab_file is not None:
            self.load_vocab_file(vocab_file)
        elif corpus is not None:
            self.fit(corpus)

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """Tiny init kwargs for the registry conformance tests (unfitted: the test fits it)."""
        return {"vocab_size": 128}

    # ------------------------------------------------------------------ building

    def _pipeline(self, vocab: dict[str, int] | None) -> Tokenizer:
        kwargs = {"unk_token": "[UNK]", "max_input_chars_per_word": self.max_input_chars_per_word}
        tok = Tokenizer(models.WordPiece(vocab, **kwargs) if vocab else models.WordPiece(**kwargs))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.lowercase, lowercase=self.lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        return tok

    def fit(self, corpus) -> None:
        """Learn the vocabulary from an iterable of texts (deterministic for a given corpus).

        Special tokens take ids 0–5; characters that do not fit in ``vocab_size`` (rarest first)
        are left out and encode to ``[UNK]``.

        Raises:
            ValueError: if the corpus has no text.
        """
        texts = [t for t in corpus if isinstance(t, str) and t.strip()]
        if not texts:
            raise ValueError("cannot fit a WordPiece vocabulary on an empty corpus")
        # vocabulary learning is ours (deterministic, see learn.py); splitting text into words is HF's
        pipeline = self._pipeline(None)
        normalizer, pre_tokenizer = pipeline.normalizer, pipeline.pre_tokenizer
        word_counts: Counter[str] = Counter()
        for text in texts:
            word_counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        tokens = learn_wordpiece_vocab(word_counts, self.max_vocab_size, list(SPECIAL_TOKENS), self.min_frequency)
        self._set(self._pipeline({t: i for i, t in enumerate(tokens)}), eos="[EOS]")

    def load_vocab_file(self, path: str | Path) -> None:
        """Load a BERT-format ``vocab.txt`` (one token per line; the line number is the id)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocab file not found: {path}")
        tokens = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
        if tokens and tokens[-1] == "":
            tokens.pop()
        vocab: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if token in vocab:
                raise ValueError(f"{path}: token {token!r} appears twice (lines {vocab[token] + 1} and {i + 1})")
            vocab[token] = i
        missing = [t for t in REQUIRED_IN_VOCAB_FILE if t not in vocab]
        if missing:
            raise ValueError(f"{path}: a BERT vocab.txt must contain {', '.join(missing)}")
        if len(vocab) > self.max_vocab_size:
            raise ValueError(
                f"{path} has {len(vocab)} tokens but vocab_size is {self.max_vocab_size}; raise vocab_size"
            )
        self._set(self._pipeline(vocab), eos="[EOS]" if "[EOS]" in vocab else "[SEP]")

    def _set(self, tok: Tokenizer, eos: str) -> None:
        size = tok.get_vocab_size()
        if size > self.max_vocab_size:
            raise ValueError(f"vocabulary has {size} tokens, more than vocab_size={self.max_vocab_size}")
        # special tokens are never split by the pre-tokenizer and are dropped when decoding
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if tok.token_to_id(t) is not None])
        self._tok = tok
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        self.pad_id, self.unk_id, self.bos_id, self.sep_id = ids["[PAD]"], ids["[UNK]"], ids["[CLS]"], ids["[SEP]"]
        self.eos_id = ids[eos]
        self.mask_id = ids["[MASK]"]

    # ------------------------------------------------------------------ the interface

    @property
    def is_fitted(self) -> bool:
        return self._tok is not None

    def _require(self) -> Tokenizer:
        if self._tok is None:
            raise RuntimeError(
                "WordPieceTokenizer has no vocabulary yet: call fit(corpus), load(dir) or pass vocab_file"
            )
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of ids in the fitted vocabulary (≤ the ``vocab_size`` limit given at init)."""
        return self._require().get_vocab_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Texts → id lists, without special tokens."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text in a list")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode takes a list of str")
        return [enc.ids for enc in self._require().encode_batch(list(texts), add_special_tokens=False)]

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        """Texts → token strings (for inspection)."""
        return [enc.tokens for enc in self._require().encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Id lists → texts; special ids are dropped."""
        tok = self._require()
        rows = [[int(i) for i in row] for row in ids]
        size = tok.get_vocab_size()
        for row in rows:
            bad = [i for i in row if not 0 <= i < size]
            if bad:
                raise ValueError(f"ids {bad[:5]} are outside the vocabulary [0, {size})")
        return [_detokenize(text) for text in tok.decode_batch(rows, skip_special_tokens=True)]

    # ------------------------------------------------------------------ persistence

    def vocab(self) -> list[str]:
        """Tokens ordered by id."""
        tok = self._require()
        return [tok.id_to_token(i) for i in range(tok.get_vocab_size())]

    def _config(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "format": 1,
            "lowercase": self.lowercase,
            "max_input_chars_per_word": self.max_input_chars_per_word,
            "special_ids": {
                "pad": self.pad_id,
                "unk": self.unk_id,
                "bos": self.bos_id,
                "eos": self.eos_id,
                "sep": self.sep_id,
                "mask": self.mask_id,
            },
        }

    def fingerprint(self) -> str:
        """SHA-256 over the vocabulary and settings: equal iff two tokenizers encode identically."""
        h = hashlib.sha256(json.dumps(self._config(), sort_keys=True).encode())
        h.update("\n".join(self.vocab()).encode("utf-8"))
        return h.hexdigest()

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` (HF), ``vocab.txt`` (BERT format) and the settings."""
        tok = self._require()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tok.save(str(directory / TOKENIZER_FILE))
        (directory / VOCAB_FILE).write_text("\n".join(self.vocab()) + "\n", encoding="utf-8")
        config = self._config() | {"fingerprint": self.fingerprint()}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")

    def load(self, directory: str | Path) -> None:
        """Restore a tokenizer written by :meth:`save` (identical ids and settings)."""
        directory = Path(directory)
        config_path, tok_path = directory / CONFIG_FILE, directory / TOKENIZER_FILE
        if not config_path.is_file() or not tok_path.is_file():
            raise FileNotFoundError(
                f"{directory} holds no saved WordPieceTokenizer (expected {CONFIG_FILE} and {TOKENIZER_FILE})"
            )
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("class") != type(self).__name__:
            raise ValueError(f"{directory} holds a {config.get('class')}, not a {type(self).__name__}")
        self.lowercase = bool(config["lowercase"])
        self.max_input_chars_per_word = int(config["max_input_chars_per_word"])
        tok = Tokenizer.from_file(str(tok_path))
        eos_token = tok.id_to_token(config["special_ids"]["eos"])
        self._set(tok, eos=eos_token)
        if config.get("fingerprint") not in (None, self.fingerprint()):
            raise ValueError(
                f"{directory}: tokenizer files do not match their recorded fingerprint (edited or corrupt)"
            )


def _detokenize(text: str) -> str:
    text = _SPACE_NEAR_CJK.sub("", text)
    text = _SPACE_BEFORE_CLOSE.sub("", text)
    return _SPACE_AFTER_OPEN.sub("", text)
