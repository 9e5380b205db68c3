"""Tiny on-disk data for the conformance tests of the path-based data sets.

``ImageTextFolder``, ``WebDatasetReader`` and ``CodeShardDataset`` read files, so the conformance
tests build them from :func:`fixture_args`: a few Shapes samples written once per process into a
temporary folder. It lives here, not in the data classes, so the library never imports test code.
"""

from __future__ import annotations

import atexit
import io
import json
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

from vilgkit.data.code_shards import FORMAT, MANIFEST, CodeShardDataset, _sha256
from vilgkit.data.image_text import ImageTextFolder
from vilgkit.data.shapes import ShapesDataset
from vilgkit.data.webdataset_reader import WebDatasetReader

NUM = 4


@cache
def fixture_dir() -> Path:
    """A temporary folder with ``index.jsonl`` + ``images/``, ``shards/00000.tar`` and ``codes/``."""
    import webdataset as wds

    root = Path(tempfile.mkdtemp(prefix="vilgkit-fixture-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    ds = ShapesDataset(size=NUM, image_size=32)
    (root / "images").mkdir()
    (root / "shards").mkdir()
    rows = []
    with wds.TarWriter(str(root / "shards" / "00000.tar")) as tar:
        for i in range(NUM):
            buf = io.BytesIO()
            Image.fromarray(ds.render(i)).save(buf, "PNG")
            (root / "images" / f"{i}.png").write_bytes(buf.getvalue())
            caption = ds.describe(i)["caption"]
            rows.append(json.dumps({"image": f"images/{i}.png", "caption": caption}))
            tar.write({"__key__": f"{i:05d}", "png": buf.getvalue(), "txt": caption})
    (root / "index.jsonl").write_text("\n".join(rows) + "\n")
    _write_codes(root / "codes", [ds.describe(i) for i in range(NUM)])
    return root


def _write_codes(out: Path, items: list[dict]) -> None:
    out.mkdir()
    n = len(items)
    tensors = {"codes": torch.arange(n * 16, dtype=torch.int16).view(n, 4, 4) % 16}
    for field in ("caption", "question", "answer"):
        tensors[f"{field}_ids"] = torch.full((n, 3), 7, dtype=torch.int32)
        tensors[f"{field}_len"] = torch.full((n,), 3, dtype=torch.int32)
    save_file(tensors, str(out / "shard-00000.safetensors"))
    with (out / "shard-00000.jsonl").open("w") as f:
        for item in items:
            f.write(json.dumps({k: item[k] for k in ("caption", "question", "answer", "lang")}) + "\n")
    fake = {"class": "fixture", "fingerprint": "0" * 64}
    manifest = {
        "format": FORMAT,
        "num_samples": n,
        "grid": [4, 4],
        "code_dtype": "int16",
        "image_tokenizer": {**fake, "codebook_size": 16, "downsample": 8},
        "text_tokenizer": {**fake, "vocab_size": 16, "special_ids": {"pad": 0}},
        "shards": [
            {
                "name": "shard-00000",
                "num_samples": n,
                "sha256": _sha256(out / "shard-00000.safetensors"),
                "jsonl_sha256": _sha256(out / "shard-00000.jsonl"),
                "widths": {"caption": 3, "question": 3, "answer": 3},
            }
        ],
    }
    (out / MANIFEST).write_text(json.dumps(manifest))


def fixture_args(cls: type) -> dict[str, Any] | None:
    """Constructor kwargs reading the fixture folder, for the built-in path-based data sets; else ``None``."""
    if cls is ImageTextFolder:
        return {"index": str(fixture_dir() / "index.jsonl"), "image_size": 32}
    if cls is WebDatasetReader:
        return {"urls": str(fixture_dir() / "shards"), "image_size": 16}
    if cls is CodeShardDataset:
        return {"path": str(fixture_dir() / "codes")}
    return None
