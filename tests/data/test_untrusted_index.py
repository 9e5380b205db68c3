"""``ImageTextFolder`` treats its index as untrusted data: paths stay inside ``image_root``, a line
that is not UTF-8 is named, and an undecodable image is counted once however often it is retried."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from vilgkit.data import DataQualityError, ImageTextFolder


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "PNG")
    return buf.getvalue()


def _folder(tmp_path, extra_rows: list[dict] = (), good: int = 20):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(good):
        (root / "images" / f"{i}.png").write_bytes(_png((10 * i, 0, 0)))
        rows.append({"image": f"images/{i}.png", "caption": f"picture {i}"})
    return root, rows + list(extra_rows)


def _write(root, rows, tail: bytes = b""):
    index = root / "index.jsonl"
    index.write_bytes("\n".join(json.dumps(r) for r in rows).encode() + b"\n" + tail)
    return index


def test_paths_outside_the_image_root_are_never_read(tmp_path):
    secret = tmp_path / "secret.png"  # a real, decodable image outside the root
    secret.write_bytes(_png((255, 255, 255)))
    escapes = [
        {"image": str(secret), "caption": "absolute path"},
        {"image": "../secret.png", "caption": "climbs out"},
        {"image": "images/../../secret.png", "caption": "climbs out in the middle"},
        {"image": "/etc/passwd", "caption": "a system file"},
    ]
    root, rows = _folder(tmp_path, escapes)
    (root / "images" / "..inside.png").write_bytes(_png((1, 2, 3)))  # a name starting with '..' is fine
    rows.append({"image": "images/..inside.png", "caption": "dots in the name"})
    ds = ImageTextFolder(str(_write(root, rows)), image_size=16, max_skip_fraction=0.5)
    assert ds.skip_counts()["skipped/outside_image_root"] == 4
    assert all(str(path).startswith(str(root)) for path, _ in ds.rows)
    assert "dots in the name" in [c for _, c in ds.rows]
    assert any("/etc/passwd" in where for where in ds.stats.by_source)


def test_non_utf8_line_is_a_bad_row_naming_its_line(tmp_path):
    root, rows = _folder(tmp_path)
    index = _write(root, rows, tail=b'{"image": "images/0.png", "caption": "caf\xe9"}\n')
    ds = ImageTextFolder(str(index), image_size=16, max_skip_fraction=0.5)
    assert len(ds) == 20 and ds.skip_counts()["skipped/bad_row"] == 1
    assert f"{index}:21" in ds.stats.by_source
    with pytest.raises(DataQualityError, match=rf"{index.name}:21"):
        ImageTextFolder(str(index), image_size=16, max_skip_fraction=0.01)


def test_non_utf8_csv_names_the_line(tmp_path):
    root, _ = _folder(tmp_path, good=2)
    index = root / "index.csv"
    index.write_bytes(b"image,caption\nimages/0.png,fine\nimages/1.png,caf\xe9\n")
    with pytest.raises(DataQualityError, match=r"index\.csv:3: not UTF-8"):
        ImageTextFolder(str(index), image_size=16)


def test_a_failed_image_is_counted_once(tmp_path):
    root, rows = _folder(tmp_path, good=60)
    for i in (3, 4, 5, 6):  # 4 corrupt files in a row: every access of 3..6 retries through them
        (root / "images" / f"{i}.png").write_bytes(b"not an image")
    ds = ImageTextFolder(str(_write(root, rows)), image_size=16, max_skip_fraction=0.2)
    for _ in range(3):
        for i in range(10):
            assert ds[i]["caption"] == rows[7 if 3 <= i <= 6 else i]["caption"]
    assert ds.skip_counts()["skipped/undecodable_image"] == 4
