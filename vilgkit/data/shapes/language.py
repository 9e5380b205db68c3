"""Shapes captions and VQA pairs in English and Chinese, and a parser that reads captions back.

Captions come from several templates per language; every template states all four attributes of
every object, in raster order of the cells. The parser (:func:`parse_caption`) is deliberately
lenient so it can score *generated* captions: it splits a caption into clauses and reads, per
clause that names a shape, whichever colour, size and position words it finds (missing ones stay
``None``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from vilgkit.data.shapes.world import COLORS

LANGUAGES = ("en", "zh")

# ----------------------------------------------------------------------------- vocabulary

SHAPE_WORDS = {
    "en": {"circle": "circle", "square": "square", "triangle": "triangle", "star": "star"},
    "zh": {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"},
}
COLOR_WORDS = {
    "en": {c: c for c in COLORS},
    "zh": {
        "red": "红色",
        "green": "绿色",
        "blue": "蓝色",
        "yellow": "黄色",
        "purple": "紫色",
        "cyan": "青色",
        "white": "白色",
    },
}
SIZE_WORDS = {"en": {"small": "small", "large": "large"}, "zh": {"small": "小的", "large": "大的"}}
#: English position phrases used in sentences ("at the top left")
POSITION_PHRASES_EN = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
POSITION_WORDS_ZH = {
    "top left": "左上角",
    "top": "上方",
    "top right": "右上角",
    "left": "左边",
    "centre": "中间",
    "right": "右边",
    "bottom left": "左下角",
    "bottom": "下方",
    "bottom right": "右下角",
}
NUMBERS = {"en": ["zero", "one", "two", "three"], "zh": ["没有", "一个", "两个", "三个"]}
NUMERALS_ZH = ["零", "一", "两", "三"]

# Recognisers (synonyms accepted when parsing). Alternations are longest-first so that at any
# position the longest phrase wins ("top left" before "top", "左上角" before "上方").
_RECOGNISE = {
    "en": {
        "shape": {
            "circle": ["circle", "circles"],
            "square": ["square", "squares"],
            "triangle": ["triangle", "triangles"],
            "star": ["star", "stars"],
        },
        "color": {c: [c] for c in COLORS} | {"purple": ["purple", "violet"]},
        "size": {"small": ["small", "little", "tiny"], "large": ["large", "big"]},
        "position": {
            "top left": ["top left", "top-left", "upper left"],
            "top right": ["top right", "top-right", "upper right"],
            "bottom left": ["bottom left", "bottom-left", "lower left"],
            "bottom right": ["bottom right", "bottom-right", "lower right"],
            "top": ["top"],
            "bottom": ["bottom"],
            "left": ["left"],
            "right": ["right"],
            "centre": ["centre", "center", "middle"],
        },
    },
    "zh": {
        "shape": {
            "circle": ["圆形", "圆"],
            "square": ["正方形", "方形"],
            "triangle": ["三角形"],
            "star": ["星形", "五角星", "星星"],
        },
        "color": {k: [v, v[0] + "的"] for k, v in COLOR_WORDS["zh"].items()},
        "size": {"small": ["小的", "小"], "large": ["大的", "大"]},
        "position": {
            "top left": ["左上角", "左上方", "左上"],
            "top right": ["右上角", "右上方", "右上"],
            "bottom left": ["左下角", "左下方", "左下"],
            "bottom right": ["右下角", "右下方", "右下"],
            "top": ["上方", "上面", "上边", "顶部"],
            "bottom": ["下方", "下面", "下边", "底部"],
            "left": ["左边", "左侧", "左方"],
            "right": ["右边", "右侧", "右方"],
            "centre": ["中间", "中央", "中心", "正中"],
        },
    },
}


def _compile(lang: str, attr: str) -> tuple[re.Pattern, dict[str, str]]:
    lookup = {syn: key for key, syns in _RECOGNISE[lang][attr].items() for syn in syns}
    alts = sorted(lookup, key=len, reverse=True)
    body = "|".join(re.escape(a) for a in alts)
    pattern = re.compile(rf"\b(?:{body})\b" if lang == "en" else f"(?:{body})")
    return pattern, lookup


_PATTERNS = {
    (lang, attr): _compile(lang, attr) for lang in LANGUAGES for attr in ("shape", "color", "size", "position")
}
_CLAUSE_SPLIT = {
    "en": re.compile(r"[,;:.]|\band\b|\bwith\b"),
    "zh": re.compile(r"[，,；;：:。、和与]"),
}
_CJK = re.compile(r"[\u4e00-\u9fff]")


def detect_language(text: str) -> str:
    """``"zh"`` if the text contains CJK characters, else ``"en"``."""
    return "zh" if _CJK.search(text) else "en"


def _check_lang(lang: str) -> str:
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; Shapes speaks {', '.join(LANGUAGES)}")
    return lang


# ----------------------------------------------------------------------------- captions

NUM_TEMPLATES = 3


def caption(scene: list[dict[str, Any]], lang: str = "en", template: int = 0) -> str:
    """One caption stating every object's size, colour, shape and position.

    Args:
        scene: objects (see :func:`vilgkit.data.shapes.world.sample_scene`).
        lang: ``"en"`` or ``"zh"``.
        template: which of :data:`NUM_TEMPLATES` phrasings to use.
    """
    _check_lang(lang)
    if not 0 <= template < NUM_TEMPLATES:
        raise ValueError(f"template must be in [0, {NUM_TEMPLATES}), got {template}")
    if lang == "en":
        return _caption_en(scene, template)
    return _caption_zh(scene, template)


def _noun_en(o: dict[str, Any]) -> str:
    return f"a {o['size']} {o['color']} {o['shape']}"


def _caption_en(scene: list[dict[str, Any]], template: int) -> str:
    if template == 0:  # a large red circle at the top left and a small blue square in the centre
        parts = [f"{_noun_en(o)} {POSITION_PHRASES_EN[o['position']]}" for o in scene]
        return _join_en(parts)
    if template == 1:  # at the top left there is a large red circle; in the centre there is ...
        return "; ".join(f"{POSITION_PHRASES_EN[o['position']]} there is {_noun_en(o)}" for o in scene)
    n = len(scene)  # two shapes: a large red circle (top left), a small blue square (centre)
    head = f"{NUMBERS['en'][n]} shape{'s' if n > 1 else ''}"
    return head + ": " + ", ".join(f"{_noun_en(o)} ({o['position']})" for o in scene)


def _join_en(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _noun_zh(o: dict[str, Any]) -> str:
    return f"一个{SIZE_WORDS['zh'][o['size']]}{COLOR_WORDS['zh'][o['color']]}{SHAPE_WORDS['zh'][o['shape']]}"


def _caption_zh(scene: list[dict[str, Any]], template: int) -> str:
    if template == 0:  # 左上角有一个大的红色圆形，中间有一个小的蓝色正方形
        return "，".join(f"{POSITION_WORDS_ZH[o['position']]}有{_noun_zh(o)}" for o in scene)
    if template == 1:  # 图中有一个位于左上角的大的红色圆形和一个位于中间的小的蓝色正方形
        parts = [
            f"一个位于{POSITION_WORDS_ZH[o['position']]}的{SIZE_WORDS['zh'][o['size']]}"
            f"{COLOR_WORDS['zh'][o['color']]}{SHAPE_WORDS['zh'][o['shape']]}"
            for o in scene
        ]
        body = parts[0] if len(parts) == 1 else "、".join(parts[:-1]) + "和" + parts[-1]
        return "图中有" + body
    n = len(scene)  # 两个图形：左上角是一个大的红色圆形；中间是一个小的蓝色正方形
    return f"{NUMERALS_ZH[n]}个图形：" + "；".join(f"{POSITION_WORDS_ZH[o['position']]}是{_noun_zh(o)}" for o in scene)


def parse_caption(text: str, lang: str | None = None) -> list[dict[str, str | None]]:
    """Read the objects a caption states.

    Returns:
        One dict per clause that names a shape, with keys ``shape``, ``color``, ``size``,
        ``position`` (canonical names; ``None`` where the clause does not say).
    """
    lang = _check_lang(lang or detect_language(text))
    text = text.lower() if lang == "en" else text
    # prefixes ("图中有", "there is") and the count head ("two shapes:") name no shape: skipped
    mentions = []
    for clause in _CLAUSE_SPLIT[lang].split(text):
        found: dict[str, str | None] = {}
        for attr in ("shape", "color", "size", "position"):
            pattern, lookup = _PATTERNS[(lang, attr)]
            hit = pattern.search(clause)
            found[attr] = lookup[hit.group(0)] if hit else None
        if found["shape"] is not None:
            mentions.append(found)
    return mentions


# ----------------------------------------------------------------------------- VQA

QUESTION_TYPES = ("color", "shape", "position", "size", "count")


def qa_pairs(scene: list[dict[str, Any]], lang: str = "en") -> list[dict[str, str]]:
    """Every unambiguous question about the scene: ``{"type", "question", "answer"}`` dicts.

    Objects are referred to by their cell (always unique); a position question names the colour
    and shape (and the size if needed), and is only asked when that description is unique.
    """
    _check_lang(lang)
    out = []
    for o in scene:
        where_en = POSITION_PHRASES_EN[o["position"]]
        where_zh = POSITION_WORDS_ZH[o["position"]]
        if lang == "en":
            out.append({"type": "color", "question": f"what colour is the object {where_en}?", "answer": o["color"]})
            out.append({"type": "shape", "question": f"what shape is the object {where_en}?", "answer": o["shape"]})
            out.append({"type": "size", "question": f"is the object {where_en} large or small?", "answer": o["size"]})
        else:
            out.append(
                {"type": "color", "question": f"{where_zh}的物体是什么颜色？", "answer": COLOR_WORDS["zh"][o["color"]]}
            )
            out.append(
                {"type": "shape", "question": f"{where_zh}的物体是什么形状？", "answer": SHAPE_WORDS["zh"][o["shape"]]}
            )
            out.append(
                {"type": "size", "question": f"{where_zh}的物体是大的还是小的？", "answer": SIZE_WORDS["zh"][o["size"]]}
            )
        desc = _unique_description(o, scene, lang)
        if desc is not None:
            if lang == "en":
                out.append({"type": "position", "question": f"where is the {desc}?", "answer": o["position"]})
            else:
                out.append(
                    {"type": "position", "question": f"{desc}在哪里？", "answer": POSITION_WORDS_ZH[o["position"]]}
                )
    n = len(scene)
    if lang == "en":
        out.append({"type": "count", "question": "how many objects are there?", "answer": NUMBERS["en"][n]})
    else:
        out.append({"type": "count", "question": "图中有几个物体？", "answer": NUMBERS["zh"][n]})
    for color in sorted({o["color"] for o in scene}):
        k = sum(o["color"] == color for o in scene)
        if lang == "en":
            out.append(
                {"type": "count", "question": f"how many {color} objects are there?", "answer": NUMBERS["en"][k]}
            )
        else:
            word = COLOR_WORDS["zh"][color]
            out.append({"type": "count", "question": f"图中有几个{word}的物体？", "answer": NUMBERS["zh"][k]})
    return out


def _unique_description(o: dict[str, Any], scene: list[dict[str, Any]], lang: str) -> str | None:
    same = [p for p in scene if p["color"] == o["color"] and p["shape"] == o["shape"]]
    color = COLOR_WORDS[lang][o["color"]]
    shape = SHAPE_WORDS[lang][o["shape"]]
    if len(same) == 1:
        return f"{color} {shape}" if lang == "en" else f"{color}{shape}"
    if sum(p["size"] == o["size"] for p in same) == 1:
        size = SIZE_WORDS[lang][o["size"]]
        return f"{size} {color} {shape}" if lang == "en" else f"{size}{color}{shape}"
    return None


def sample_qa(
    scene: list[dict[str, Any]],
    lang: str,
    rng: np.random.Generator,
    type_weights: dict[str, float] | None = None,
) -> dict[str, str]:
    """One question: a type drawn among those the scene allows, then a pair of it.

    Types are drawn uniformly unless ``type_weights`` (question type → relative weight, missing
    types weigh 1) says otherwise.
    """
    pairs = qa_pairs(scene, lang)
    types = [t for t in QUESTION_TYPES if any(p["type"] == t for p in pairs)]
    if type_weights is None:  # the original draw, so unweighted data sets keep every question
        qtype = types[int(rng.integers(len(types)))]
    else:
        weights = np.array([float(type_weights.get(t, 1.0)) for t in types])
        qtype = types[int(rng.choice(len(types), p=weights / weights.sum()))]
    of_type = [p for p in pairs if p["type"] == qtype]
    return of_type[int(rng.integers(len(of_type)))]


def canonical_answer(answer: str, lang: str | None = None) -> str:
    """Normalise an answer for exact-match scoring (case, spaces, trailing punctuation)."""
    text = answer.strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.rstrip(".。!！?？ ")


__all__ = [
    "LANGUAGES",
    "NUM_TEMPLATES",
    "QUESTION_TYPES",
    "SHAPE_WORDS",
    "COLOR_WORDS",
    "SIZE_WORDS",
    "POSITION_WORDS_ZH",
    "caption",
    "parse_caption",
    "qa_pairs",
    "sample_qa",
    "detect_language",
    "canonical_answer",
]
