"""``WebDatasetReader`` through the trainer's ``StatefulLoader`` with ``repeat: false``: a resume at
an epoch's end goes on with the next epoch, and the skips after each stream's last sample are
counted (they used to be lost: no later sample carried them)."""

from __future__ import annotations

import io
import json

import webdataset as wds
from PIL import Image

from vilgkit.data import WebDatasetReader, collate
from vilgkit.engine.loader import StatefulLoader


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 7 % 256, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _shards(root, num_shards=2, per_shard=6, bad_tail=0):
    """Shards of ``per_shard`` samples whose last ``bad_tail`` have an undecodable image."""
    root.mkdir()
    for s in range(num_shards):
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as tar:
            for i in range(per_shard):
                image = b"\x89PNG broken" if i >= per_shard - bad_tail else _png(s * per_shard + i)
                tar.write(
                    {
                        "__key__": f"{s:05d}{i:04d}",
                        "png": image,
                        "txt": f"caption {s} {i}",
                        "json": json.dumps({}).encode(),
                    }
                )
    return root


def _loader(root, batch_size=4):
    reader = WebDatasetReader(str(root), image_size=16, seed=0, repeat=False, shuffle_shards=False)
    return StatefulLoader(reader, batch_size, collate_fn=collate, drop_last=False)


def _take(loader, n):
    return [key for _ in range(n) for key in next(loader)["key"]]


def test_resume_at_an_epochs_end_goes_on_with_the_next_epoch(tmp_path):
    root = _shards(tmp_path / "shards", num_shards=2, per_shard=4)  # 8 samples: 2 batches per epoch
    reference = _take(_loader(root), 5)
    first = _loader(root)
    consumed = _take(first, 2)  # exactly one epoch
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _loader(root)
    resumed.load_state_dict(state)
    assert consumed + _take(resumed, 3) == reference


def test_skips_after_a_streams_last_sample_are_counted(tmp_path):
    root = _shards(tmp_path / "shards", num_shards=2, per_shard=6, bad_tail=2)  # 4 bad, all at shard ends
    loader = _loader(root)
    keys = _take(loader, 2)  # 8 good samples = one epoch
    assert len(keys) == 8
    counts = loader.counters()
    assert counts["skipped/undecodable_image"] == 4, counts
    # and a resume from there neither re-reads nor re-counts them
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = _loader(root)
    resumed.load_state_dict(state)
    assert _take(resumed, 2) == keys  # the next epoch, same order
    assert resumed.counters()["skipped/undecodable_image"] == 8  # 4 from before + 4 in the new epoch
