"""Real data: JSONL/CSV + folder, WebDataset shards (img2dataset layout), skip counting, exact resume."""

from __future__ import annotations

import csv
import io
import itertools
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from vilgkit.data import DataQualityError, ImageTextFolder, ShapesDataset, StreamPosition, WebDatasetReader, collate
from vilgkit.data.preprocess import load_image, resize_center_crop

SHAPES = ShapesDataset(size=64, image_size=32, seed=0)


def _png(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(SHAPES.render(i)).save(buf, fmt)
    return buf.getvalue()


def test_resize_short_side_and_centre_crop():
    # 60×30 image: left third red, middle third green, right third blue → the centre crop is green
    array = np.zeros((30, 60, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)
    array[:, 20:40] = (0, 255, 0)
    array[:, 40:] = (0, 0, 255)
    out = resize_center_crop(Image.fromarray(array), 16)
    assert out.size == (16, 16)
    centre = np.asarray(out)[4:12, 6:10].reshape(-1, 3).mean(0)
    assert centre[1] > 200 and centre[0] < 40 and centre[2] < 40
    t = load_image(_png(0), 16)
    assert t.shape == (3, 16, 16) and t.min() >= -1 and t.max() <= 1


def _write_folder(tmp_path, fmt: str):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rows = []
    for i in range(20):
        (img_dir / f"{i}.png").write_bytes(_png(i))
        rows.append({"image": f"images/{i}.png", "caption": SHAPES.describe(i)["caption"]})
    (img_dir / "bad.png").write_bytes(b"not an image at all")
    rows += [
        {"image": "images/0.png", "caption": "   "},  # empty caption
        {"image": "images/1.png", "caption": "x" * 400},  # over-long caption
        {"image": "images/missing.png", "caption": "a red circle"},  # missing pair member
    ]
    index = tmp_path / f"index.{fmt}"
    if fmt == "jsonl":
        index.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    else:
        with index.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    return index, rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_index_folder_reading_and_counting(tmp_path, fmt):
    index, rows = _write_folder(tmp_path, fmt)
    ds = ImageTextFolder(str(index), image_size=32, max_skip_fraction=0.5)
    assert len(ds) == 20
    item = ds[3]
    assert item["caption"] == rows[3]["caption"] and item["image"].shape == (3, 32, 32)
    assert torch.allclose(item["image"], SHAPES[3]["image"], atol=1e-6)  # same size: pixels unchanged
    counts = ds.skip_counts()
    assert counts["skipped/empty_caption"] == 1 and counts["skipped/long_caption"] == 1
    assert counts["skipped/missing_image"] == 1
    assert counts.get("skipped/bad_row", 0) == (1 if fmt == "jsonl" else 0)
    assert list(ds.iter_texts(2)) == [rows[0]["caption"], rows[1]["caption"]]
    with pytest.raises(DataQualityError, match="index"):
        ImageTextFolder(str(index), image_size=32, max_skip_fraction=0.05)


def test_index_folder_undecodable_image_falls_back_deterministically(tmp_path):
    index, rows = _write_folder(tmp_path, "jsonl")
    lines = index.read_text().splitlines()
    lines[5] = json.dumps({"image": "images/bad.png", "caption": "a corrupt one"})
    index.write_text("\n".join(lines[:20]) + "\n")
    ds = ImageTextFolder(str(index), image_size=32)
    item = ds[5]
    assert item["caption"] == rows[6]["caption"]  # replaced by the next usable row
    assert ds.skip_counts()["skipped/undecodable_image"] == 1
    with pytest.raises(DataQualityError):
        ImageTextFolder(str(index), image_size=32, check_images=True, max_skip_fraction=0.01)


def _write_shards(root, num_shards=6, per_shard=10, corrupt=()):
    root.mkdir(exist_ok=True)
    exts = ["png", "jpg", "webp"]
    for s in range(num_shards):
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as w:
            for i in range(per_shard):
                n = s * per_shard + i
                key = f"{s:05d}{i:04d}"
                ext = exts[n % 3]
                sample = {
                    "__key__": key,
                    ext: _png(n % 64, {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[ext]),
                    "txt": SHAPES.describe(n % 64)["caption"],
                    "json": json.dumps({"key": key}).encode(),
                }
                if (s, i) in corrupt:
                    kind = corrupt[(s, i)]
                    if kind == "image":
                        sample[ext] = b"\x89PNG garbage"
                    elif kind == "no_txt":  # caption only in the json (img2dataset keeps it there too)
                        del sample["txt"]
                        sample["json"] = json.dumps({"caption": "a small red star"}).encode()
                    elif kind == "no_image":
                        del sample[ext]
                    elif kind == "empty":
                        sample["txt"] = "  "
                w.write(sample)
    return root


def _keys(reader, num_workers, batches, state=None, batch_size=4):
    if state is not None:
        reader.load_state_dict(state)
    loader = DataLoader(reader, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    tracker = StreamPosition(state)
    keys = []
    for batch in itertools.islice(loader, batches):
        tracker.update(batch)
        keys += batch["key"]
    return keys, tracker.state_dict()


def test_webdataset_reading_and_skip_counts(tmp_path):
    corrupt = {(0, 1): "image", (1, 2): "no_txt", (2, 3): "no_image", (3, 4): "empty"}
    root = _write_shards(tmp_path / "shards", num_shards=4, corrupt=corrupt)
    reader = WebDatasetReader(str(root / "{00000..00003}.tar"), image_size=16, shuffle_shards=False, min_seen=1000)
    items = list(reader)
    assert len(items) == 37
    assert items[0]["image"].shape == (3, 16, 16) and items[0]["caption"] == SHAPES.describe(0)["caption"]
    assert any(it["caption"] == "a small red star" for it in items)
    counts = reader.skip_counts()
    assert counts["skipped/undecodable_image"] == 1 and counts["skipped/missing_image"] == 1
    assert counts["skipped/empty_caption"] == 1 and counts["kept"] == 37
    assert sum(sum(it["skipped"].values()) for it in items) == 3  # per-sample deltas add up
    assert len(list(reader.iter_texts())) == 38  # only the empty caption is not a text
    with pytest.raises(DataQualityError, match=r"00000\.tar"):
        list(WebDatasetReader(str(root), image_size=16, shuffle_shards=False, max_skip_fraction=0.01, min_seen=5))


def test_webdataset_split_across_ranks_and_workers(tmp_path):
    root = _write_shards(tmp_path / "shards", num_shards=6, per_shard=5)
    everything = sorted(it["key"] for it in WebDatasetReader(str(root), image_size=16))
    assert len(everything) == 30
    per_rank = [[it["key"] for it in WebDatasetReader(str(root), image_size=16, rank=r, world_size=2)] for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == everything
    with_workers, _ = _keys(WebDatasetReader(str(root), image_size=16, rank=1, world_size=2), 2, 100, batch_size=5)
    assert sorted(with_workers) == sorted(per_rank[1])
    with pytest.raises(ValueError, match="ranks"):
        WebDatasetReader(str(root / "00000.tar"), world_size=2, rank=0)


def test_webdataset_order_is_deterministic_for_a_seed(tmp_path):
    root = _write_shards(tmp_path / "shards", num_shards=6, per_shard=3)
    a = [it["key"] for it in WebDatasetReader(str(root), image_size=16, seed=1)]
    b = [it["key"] for it in WebDatasetReader(str(root), image_size=16, seed=1)]
    c = [it["key"] for it in WebDatasetReader(str(root), image_size=16, seed=2)]
    assert a == b and a != c and sorted(a) == sorted(c)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_webdataset_exact_resume(tmp_path, num_workers):
    root = _write_shards(tmp_path / "shards", num_shards=6, per_shard=5)

    def reader():
        return WebDatasetReader(str(root), image_size=16, seed=3, repeat=True)

    full, _ = _keys(reader(), num_workers, 20)  # 80 samples: crosses epochs (30 per epoch)
    first, state = _keys(reader(), num_workers, 7)  # interrupted after an odd number of batches
    state = json.loads(json.dumps(state))  # the state survives a JSON checkpoint
    second, state2 = _keys(reader(), num_workers, 8, state)
    third, _ = _keys(reader(), num_workers, 5, state2)
    assert first + second + third == full


def test_webdataset_count_based_skip(tmp_path):
    root = _write_shards(tmp_path / "shards", num_shards=3, per_shard=4)
    full = [it["key"] for it in WebDatasetReader(str(root), image_size=16, seed=0)]
    reader = WebDatasetReader(str(root), image_size=16, seed=0)
    reader.skip(5)
    assert [it["key"] for it in reader] == full[5:]
