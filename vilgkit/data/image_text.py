"""``ImageTextFolder``: image–caption pairs from a JSONL or CSV index plus an image folder."""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from vilgkit.data.preprocess import DataQualityError, SkipStats, caption_sample, check_caption, load_image
from vilgkit.registry import DATASETS


@DATASETS.register_module()
class ImageTextFolder(Dataset):
    """Map-style image–caption pairs.

    The index is a ``.jsonl`` file (one object per line) or a ``.csv`` file with a header; each row
    names an image (relative to ``image_root``, default: the index's folder) and its caption. Rows
    with a missing/empty/over-long caption or a missing image file are dropped when the index is
    read; an image that fails to decode when it is loaded is replaced by the next usable row
    (deterministically; a row found undecodable is counted once and not tried again) — both counted
    per reason in :meth:`skip_counts`. Beyond ``max_skip_fraction`` a
    :class:`~vilgkit.data.preprocess.DataQualityError` names the file.

    The index is data, not trusted: an image path that is absolute or leaves ``image_root`` through
    ``..`` is skipped (``outside_image_root``), never read; a ``.jsonl`` line that is not UTF-8 is a
    bad row naming its line (in a ``.csv``, where a row may span lines, it stops the data set with an
    error naming the line).

    Args:
        index: path of the ``.jsonl`` or ``.csv`` index.
        image_root: folder the image paths are relative to.
        image_size: output side (short side resized, centre-cropped).
        image_key, caption_key: column names.
        max_caption_chars: longer captions are skipped (``long_caption``).
        max_skip_fraction: allowed fraction of skipped rows.
        check_images: decode every image once when the index is read (slow; finds corrupt files up front).

    Samples: ``image`` (float ``[3, S, S]`` in [-1, 1]), ``caption``, ``question``/``answer`` (empty),
    ``lang`` (``zh`` if the caption has CJK characters), ``index``, ``key`` (the image path).
    """

    def __init__(
        self,
        index: str,
        image_root: str | None = None,
        image_size: int = 256,
        image_key: str = "image",
        caption_key: str = "caption",
        max_caption_chars: int = 300,
        max_skip_fraction: float = 0.05,
        check_images: bool = False,
    ) -> None:
        self.index_path = Path(index)
        if not self.index_path.is_file():
            raise FileNotFoundError(f"index file not found: {self.index_path}")
        self.image_root = Path(image_root) if image_root is not None else self.index_path.parent
        self.image_size = int(image_size)
        self.stats = SkipStats(max_skip_fraction, min_seen=1)
        self.rows: list[tuple[Path, str]] = []
        for line_no, row in self._read_rows():
            where = f"{self.index_path}:{line_no}"
            if row is None:
                self._skip("bad_row", where)
                continue
            caption, reason = check_caption(row.get(caption_key), max_caption_chars)
            if reason:
                self._skip(reason, where)
                continue
            name = row.get(image_key)
            if name and not _inside_root(str(name)):
                self._skip("outside_image_root", f"{where} ({name})")
                continue
            path = self.image_root / str(name) if name else None
            if path is None or not path.is_file():
                self._skip("missing_image", f"{where} ({path})")
                continue
            if check_images:
                try:
                    load_image(path, 8)
                except Exception:
                    self._skip("undecodable_image", str(path))
                    continue
            self.stats.ok()
            self.rows.append((path, caption))
        self.check_quality()
        if not self.rows:
            raise ValueError(f"{self.index_path}: no usable rows ({self.stats.counts()})")
        self.stats.min_seen = 50  # from now on (decode failures while training) check as a stream
        self._undecodable: set[int] = set()  # rows whose image failed to decode (per process)

    def _skip(self, reason: str, where: str) -> None:
        # while reading the index, the fraction is checked once at the end (a bad first row is fine)
        self.stats.reasons[reason] += 1
        self.stats.by_source[where] += 1
        self.stats.seen += 1

    def _read_rows(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        suffix = self.index_path.suffix.lower()
        data = self.index_path.read_bytes()
        if suffix == ".jsonl":
            for i, raw in enumerate(data.split(b"\n"), start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    row = None
                yield i, row if isinstance(row, dict) else None
        elif suffix == ".csv":
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                line = data.count(b"\n", 0, err.start) + 1
                raise DataQualityError(f"{self.index_path}:{line}: not UTF-8 text (byte {err.start})") from None
            for i, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
                yield i, row
        else:
            raise ValueError(f"{self.index_path}: the index must be .jsonl or .csv, got {suffix or 'no suffix'}")

    def check_quality(self) -> None:
        """Raise :class:`DataQualityError` if the skipped fraction is above the limit."""
        s = self.stats
        if s.skipped > s.max_skip_fraction * max(1, s.seen):
            worst = dict(s.by_source.most_common(3))
            raise DataQualityError(
                f"{self.index_path}: {s.skipped} of {s.seen} rows unusable ({dict(s.reasons)}); e.g. {worst}"
            )

    def skip_counts(self) -> dict[str, int]:
        """Counters for the run log (``seen``, ``kept``, ``skipped``, ``skipped/<reason>``)."""
        return self.stats.counts()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.rows)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} out of range for {n} rows")
        index = int(index) % n
        for attempt in range(n):
            row = (index + attempt) % n
            if row in self._undecodable:
                continue  # counted when it first failed
            path, caption = self.rows[row]
            try:
                image = load_image(path, self.image_size)
            except Exception:
                self._undecodable.add(row)
                self.stats.skip("undecodable_image", str(path))
                continue
            return caption_sample(image, caption, str(path), index=index)
        raise DataQualityError(f"{self.index_path}: no image in the index could be decoded")

    def iter_texts(self, limit: int | None = None) -> Iterator[str]:
        """Captions (no image decoding) for tokenizer fitting."""
        for _, caption in self.rows[:limit]:
            yield caption


def _inside_root(name: str) -> bool:
    """``name`` is a relative path that stays inside the image root (no absolute path, no ``..`` out).

    Lexical on purpose: a data set may be a tree of symlinks; what the index may not do is name a
    file by an absolute path or climb out of the root.
    """
    name = name.replace("\\", "/")
    if posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):  # /etc/passwd, C:/...
        return False
    return posixpath.normpath(name).split("/")[0] != ".."
