"""Captioning metrics (paper §4.3): BLEU@4, METEOR, ROUGE-L and CIDEr through pycocoevalcap.

Two tokenisation modes, as the paper's Tables 3–4 use:

* ``"word"`` (English): the COCO protocol — Stanford PTB tokenizer (Java), lower-cased, punctuation
  removed — then the scorers;
* ``"char"`` (Chinese): every CJK character is one token (runs of Latin letters or digits stay one
  token), punctuation removed, lower-cased; the PTB tokenizer is skipped.

METEOR and the PTB tokenizer run Java subprocesses (``java`` must be on ``PATH``). One METEOR process
is kept per Python process (it takes seconds to start); if its pipe breaks it is restarted once.
"""

from __future__ import annotations

import re
import shutil
import threading
import unicodedata
from typing import Any, ClassVar

from vilgkit.metrics.base import Metric, check_lengths
from vilgkit.registry import METRICS

#: metric name → the pycocoevalcap method name it reports
CAPTION_METRICS = ("bleu4", "meteor", "rouge_l", "cider")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_meteor_lock = threading.Lock()
_meteor_instance: Any = None


def char_tokenize(text: str) -> str:
    """Character-level tokens for Chinese: ``"左上角有1个 red 圆。"`` → ``"左 上 角 有 1 个 red 圆"``."""
    tokens: list[str] = []
    word: list[str] = []
    for ch in unicodedata.normalize("NFKC", text.lower()):
        if _CJK.match(ch):
            if word:
                tokens.append("".join(word))
                word = []
            tokens.append(ch)
        elif ch.isalnum():
            word.append(ch)
        else:  # whitespace or punctuation ends a word and is dropped
            if word:
                tokens.append("".join(word))
                word = []
    if word:
        tokens.append("".join(word))
    return " ".join(tokens)


def word_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    """COCO's PTB tokenisation of ``{id: [captions]}`` (Java, lower-cased, punctuation removed)."""
    _require_java("the PTB tokenizer")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The PTB tokenizer aligns its output by line: an empty caption must still produce a line.
    payload = {k: [{"caption": c if c.strip() else "."} for c in v] for k, v in captions.items()}
    return PTBTokenizer().tokenize(payload)


def _require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            f"{what} needs Java (pycocoevalcap runs a .jar); install a JRE, e.g. `apt-get install default-jre-headless`"
        )


def _meteor():
    global _meteor_instance
    if _meteor_instance is None:
        _require_java("METEOR")
        from pycocoevalcap.meteor.meteor import Meteor

        _meteor_instance = Meteor()
    return _meteor_instance


def meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap's METEOR on tokenised captions, restarting the Java process once if it died."""
    global _meteor_instance
    with _meteor_lock:
        for attempt in (0, 1):
            try:
                return _meteor().compute_score(gts, res)
            except (BrokenPipeError, ValueError, OSError):
                # A dead or desynchronised jar answers garbage or nothing: start a fresh one.
                _meteor_instance = None
                if attempt:
                    raise
    raise AssertionError("unreachable")


def caption_scores(
    predictions: list[str],
    references: list[list[str]],
    *,
    mode: str = "word",
    metrics: tuple[str, ...] = CAPTION_METRICS,
) -> dict[str, float]:
    """Corpus-level caption metrics.

    Args:
        predictions: one generated caption per image.
        references: the reference captions of each image (one or more).
        mode: ``"word"`` (PTB tokenizer, English) or ``"char"`` (character level, Chinese).
        metrics: a subset of ``("bleu4", "meteor", "rouge_l", "cider")``.

    Returns:
        ``{"bleu4": …, "meteor": …, "rouge_l": …, "cider": …}`` on pycocoevalcap's scale (0–1,
        CIDEr 0–10).
    """
    n = check_lengths(predictions=predictions, references=references)
    if n == 0:
        raise ValueError("no captions to score")
    if mode not in ("word", "char"):
        raise ValueError(f"mode must be 'word' or 'char', got {mode!r}")
    unknown = set(metrics) - set(CAPTION_METRICS)
    if unknown:
        raise ValueError(f"unknown caption metric(s) {sorted(unknown)}; choose from {CAPTION_METRICS}")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings")
    res_raw = {i: [p] for i, p in enumerate(predictions)}
    gts_raw = {i: list(r) for i, r in enumerate(references)}
    if mode == "char":
        res = {i: [char_tokenize(c) for c in v] for i, v in res_raw.items()}
        gts = {i: [char_tokenize(c) for c in v] for i, v in gts_raw.items()}
    else:
        both = word_tokenize({**{2 * i: v for i, v in res_raw.items()}, **{2 * i + 1: v for i, v in gts_raw.items()}})
        res = {i: both[2 * i] for i in range(n)}
        gts = {i: both[2 * i + 1] for i in range(n)}
    return _score(gts, res, metrics)


def _score(gts: dict[int, list[str]], res: dict[int, list[str]], metrics: tuple[str, ...]) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out: dict[str, float] = {}
    if "bleu4" in metrics:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out["bleu4"] = float(bleu[3])
    if "meteor" in metrics:
        out["meteor"] = float(meteor_score(gts, res)[0])
    if "rouge_l" in metrics:
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


@METRICS.register_module()
class CaptionMetrics(Metric):
    """BLEU@4, METEOR, ROUGE-L and CIDEr over generated captions (task ``image2text``).

    Args:
        mode: ``"word"`` (English, PTB tokenizer), ``"char"`` (Chinese, character level) or
            ``"auto"`` (``"char"`` when most references contain CJK characters).
        metrics: which of ``bleu4``, ``meteor``, ``rouge_l``, ``cider`` to compute (METEOR and the
            word mode need Java).
    """

    key: ClassVar[str] = "caption"
    task: ClassVar[str] = "image2text"
    inputs: ClassVar[tuple[str, ...]] = ("predictions", "references")

    def __init__(self, mode: str = "auto", metrics: list[str] | None = None) -> None:
        if mode not in ("auto", "word", "char"):
            raise ValueError(f"mode must be 'auto', 'word' or 'char', got {mode!r}")
        self.mode = mode
        self.metrics = tuple(metrics or CAPTION_METRICS)
        bad = set(self.metrics) - set(CAPTION_METRICS)
        if bad:
            raise ValueError(f"unknown caption metric(s) {sorted(bad)}; choose from {CAPTION_METRICS}")
        super().__init__()

    def reset(self) -> None:
        self._predictions: list[str] = []
        self._references: list[list[str]] = []

    def update(self, predictions: list[str], references: list[list[str]]) -> None:  # type: ignore[override]
        check_lengths(predictions=predictions, references=references)
        self._predictions.extend(predictions)
        self._references.extend([r] if isinstance(r, str) else list(r) for r in references)

    def resolved_mode(self) -> str:
        """The tokenisation mode in effect (``auto`` looks at the references)."""
        if self.mode != "auto":
            return self.mode
        cjk = sum(bool(_CJK.search(r[0])) for r in self._references if r)
        return "char" if cjk * 2 > len(self._references) else "word"

    def compute(self) -> dict[str, float]:
        return caption_scores(self._predictions, self._references, mode=self.resolved_mode(), metrics=self.metrics)

    def settings(self) -> dict[str, Any]:
        return {"mode": self.resolved_mode() if self._references else self.mode, "metrics": list(self.metrics)}
