"""The Shapes world: determinism, languages, detector accuracy, compositional split, scorers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from vilgkit.data import ShapesDataset, collate
from vilgkit.data.shapes import (
    COLORS,
    DEFAULT_HELD_OUT,
    SHAPES,
    caption,
    caption_matches_scene,
    detect_objects,
    image_matches_caption,
    image_matches_scene,
    parse_caption,
    qa_pairs,
    render_scene,
    scene_key,
)
from vilgkit.data.shapes.language import NUMBERS, POSITION_WORDS_ZH
from vilgkit.registry import DATASETS

CJK = re.compile(r"[\u4e00-\u9fff]")


def test_registered_and_builds_from_conformance_args():
    cls = DATASETS.get("ShapesDataset")
    ds = cls(**cls.conformance_args())
    assert len(ds) == 8 and ds[0]["image"].shape == (3, 32, 32)


def test_determinism_for_a_seed():
    a = ShapesDataset(size=20, seed=5, languages=["en", "zh"])
    b = ShapesDataset(size=20, seed=5, languages=["en", "zh"], cache_mb=0)
    for i in range(20):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert (x["caption"], x["question"], x["answer"], x["scene"]) == (
            y["caption"],
            y["question"],
            y["answer"],
            y["scene"],
        )
    assert torch.equal(a[3]["image"], a[3]["image"])  # cached path returns the same pixels
    other_seed = ShapesDataset(size=20, seed=6)
    assert sum(torch.equal(a[i]["image"], other_seed[i]["image"]) for i in range(20)) < 3
    val = ShapesDataset(split="val", size=20, seed=5)
    assert sum(torch.equal(a[i]["image"], val[i]["image"]) for i in range(20)) < 3


def test_sample_contract():
    item = ShapesDataset(size=4, image_size=64)[1]
    img = item["image"]
    assert img.dtype == torch.float32 and img.shape == (3, 64, 64)
    assert img.min() >= -1 and img.max() <= 1
    assert {"caption", "references", "question", "answer", "question_type", "lang", "scene", "index"} <= set(item)
    assert item["index"] == 1 and 1 <= len(item["scene"]) <= 3
    cells = [(o["row"], o["col"]) for o in item["scene"]]
    assert len(set(cells)) == len(cells)
    # aliased rendering: every pixel is the background or a palette colour
    pixels = render_scene(item["scene"], 64).reshape(-1, 3)
    from vilgkit.data.shapes.world import BACKGROUND, PALETTE

    allowed = {BACKGROUND, *PALETTE.values()}
    assert {tuple(p) for p in np.unique(pixels, axis=0).tolist()} <= allowed


def test_both_languages_balanced_and_parsable():
    ds = ShapesDataset(size=200, languages=["en", "zh"], seed=1)
    langs = [ds.describe(i)["lang"] for i in range(200)]
    assert langs.count("en") == langs.count("zh") == 100
    for i in range(200):
        d = ds.describe(i)
        assert bool(CJK.search(d["caption"])) == (d["lang"] == "zh")
        assert bool(CJK.search(d["question"])) == (d["lang"] == "zh")
        for ref in d["references"]:  # every template round-trips through the parser
            score = caption_matches_scene(ref, d["scene"])
            assert score["all_correct"], (ref, d["scene"])


def test_paper_style_example_captions():
    scene = [
        {"shape": "circle", "color": "red", "size": "large", "position": "top left", "row": 0, "col": 0},
        {"shape": "square", "color": "blue", "size": "small", "position": "centre", "row": 1, "col": 1},
    ]
    assert caption(scene, "en", 0) == "a large red circle at the top left and a small blue square in the centre"
    assert caption(scene, "zh", 0) == "左上角有一个大的红色圆形，中间有一个小的蓝色正方形"


def test_caption_scorer_finds_each_wrong_attribute():
    ds = ShapesDataset(size=50, seed=2, languages=["en", "zh"])
    for i in range(50):
        d = ds.describe(i)
        obj = d["scene"][0]
        wrong_color = next(c for c in COLORS if c != obj["color"])
        bad_scene = [dict(obj, color=wrong_color), *d["scene"][1:]]
        score = caption_matches_scene(d["caption"], bad_scene)
        assert not score["all_correct"]
        assert score["color"] == pytest.approx(1 - 1 / len(bad_scene))
        assert score["shape"] == score["size"] == score["position"] == 1.0
    # a caption that forgets an object states too few objects
    scene = [
        {"shape": "circle", "color": "red", "size": "large", "position": "top left", "row": 0, "col": 0},
        {"shape": "star", "color": "white", "size": "small", "position": "bottom right", "row": 2, "col": 2},
    ]
    res = caption_matches_scene(caption(scene[:1], "en"), scene)
    assert not res["all_correct"] and not res["count_correct"] and res["objects_correct"] == 1
    assert parse_caption("garbage words") == []


@pytest.mark.parametrize("image_size,n", [(64, 300), (128, 60)])
def test_detector_recovers_at_least_99_percent(image_size, n):
    found = total = 0
    for split in ("train", "test"):
        ds = ShapesDataset(split=split, size=n // 2, image_size=image_size, seed=11, cache_mb=0)
        for i in range(len(ds)):
            item = ds[i]
            result = image_matches_scene(item["image"], item["scene"])
            found += result["objects_found"]
            total += result["num_objects"]
    assert found / total >= 0.99, f"{found}/{total} at {image_size}px"


def test_detector_is_robust_to_generator_noise():
    gen = torch.Generator().manual_seed(0)
    ds = ShapesDataset(size=60, image_size=64, seed=4, cache_mb=0)
    ok = 0
    for i in range(len(ds)):
        item = ds[i]
        noisy = item["image"] + 0.2 * torch.randn(item["image"].shape, generator=gen)
        speckle = torch.rand(noisy.shape[1:], generator=gen) < 0.02
        noisy[:, speckle] = torch.rand(3, int(speckle.sum()), generator=gen) * 2 - 1
        ok += image_matches_scene(noisy.clamp(-1, 1), item["scene"])["match"]
    assert ok / len(ds) >= 0.97


def test_image_scorers_reject_wrong_images():
    ds = ShapesDataset(size=30, image_size=64, seed=3)
    for i in range(30):
        item = ds[i]
        obj = item["scene"][0]
        other = next(s for s in SHAPES if s != obj["shape"])
        wrong = render_scene([dict(obj, shape=other), *item["scene"][1:]], 64)
        res = image_matches_scene(wrong, item["scene"])
        assert not res["match"] and scene_key(obj) in res["missing"]
        assert image_matches_caption(item["image"], item["caption"])["match"]
        assert not image_matches_caption(wrong, item["caption"])["match"]
    blank = torch.full((3, 64, 64), -1.0)
    assert detect_objects(blank) == []
    with pytest.raises(ValueError, match="square"):
        detect_objects(torch.zeros(3, 64, 32))


def test_compositional_split_holds_out_what_it_says():
    held = {tuple(p) for p in DEFAULT_HELD_OUT}
    train = ShapesDataset(split="train", size=600, seed=0)
    test = ShapesDataset(split="test", size=200, seed=0)
    train_pairs = {(o["color"], o["shape"]) for i in range(len(train)) for o in train.describe(i)["scene"]}
    assert not train_pairs & held
    assert len(train_pairs) == len(COLORS) * len(SHAPES) - len(held)  # everything else does occur
    for i in range(len(test)):
        assert any((o["color"], o["shape"]) in held for o in test.describe(i)["scene"])
    custom = ShapesDataset(split="train", size=300, held_out=[["white", "star"]])
    assert all((o["color"], o["shape"]) != ("white", "star") for i in range(300) for o in custom.describe(i)["scene"])
    free = ShapesDataset(split="test", size=100, held_out=[])
    assert free.held_out == []


def test_vqa_answers_agree_with_the_scene():
    ds = ShapesDataset(size=150, seed=7, languages=["en", "zh"])
    types = set()
    for i in range(150):
        d = ds.describe(i)
        types.add(d["question_type"])
        assert {"question": d["question"], "answer": d["answer"], "type": d["question_type"]} in qa_pairs(
            d["scene"], d["lang"]
        )
        for qa in qa_pairs(d["scene"], d["lang"]):
            if qa["type"] == "count" and qa["question"] in ("how many objects are there?", "图中有几个物体？"):
                assert qa["answer"] == NUMBERS[d["lang"]][len(d["scene"])]
            if qa["type"] == "position" and d["lang"] == "zh":
                assert qa["answer"] in POSITION_WORDS_ZH.values()
    assert types == {"color", "shape", "position", "size", "count"}


def test_train_question_weights_shift_the_training_mix_only():
    def share(ds, qtype):
        return sum(ds.describe(i)["question_type"] == qtype for i in range(len(ds))) / len(ds)

    plain = ShapesDataset(size=600, seed=3)
    heavy = ShapesDataset(size=600, seed=3, train_question_weights={"position": 4.0})
    # position is allowed in most scenes; weight 4 against four types of weight 1 → about half
    assert share(plain, "position") < 0.25 and share(heavy, "position") > 0.4
    for i in range(50):  # the scene, caption and the question's validity are unchanged
        p, h = plain.describe(i), heavy.describe(i)
        assert (p["scene"], p["caption"]) == (h["scene"], h["caption"])
        assert {"question": h["question"], "answer": h["answer"], "type": h["question_type"]} in qa_pairs(
            h["scene"], "en"
        )
    # evaluation splits ignore the weights: their questions are exactly the uniform ones
    for split in ("val", "test"):
        a = ShapesDataset(split=split, size=40, seed=3, held_out=[])
        b = ShapesDataset(split=split, size=40, seed=3, held_out=[], train_question_weights={"position": 4.0})
        assert [a.describe(i)["question"] for i in range(40)] == [b.describe(i)["question"] for i in range(40)]
    with pytest.raises(ValueError, match=r"unknown question type.*'where'.*choose from.*position"):
        ShapesDataset(size=4, train_question_weights={"where": 2.0})
    with pytest.raises(ValueError, match="> 0"):
        ShapesDataset(size=4, train_question_weights={"count": 0.0})


def test_collate_batches_and_rejects_mismatch():
    ds = ShapesDataset(size=4, image_size=32)
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32)
    assert isinstance(batch["caption"], list) and len(batch["scene"]) == 4 and batch["index"] == [0, 1, 2, 3]
    big = ShapesDataset(size=1, image_size=64)[0]
    with pytest.raises(ValueError, match="image"):
        collate([ds[0], big])
    with pytest.raises(ValueError):
        collate([])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"split": "dev"}, "split"),
        ({"languages": ["fr"]}, "languages"),
        ({"held_out": [["pink", "star"]]}, "pink"),
        ({"held_out": [["red", "hexagon"]]}, "hexagon"),
        ({"image_size": 8}, "image_size"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"templates": [7]}, "templates"),
    ],
)
def test_bad_arguments_are_clear(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**kwargs)


def test_index_out_of_range():
    ds = ShapesDataset(size=3)
    with pytest.raises(IndexError):
        ds[3]
    assert ds[-1]["index"] == 2
