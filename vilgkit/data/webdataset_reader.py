"""``WebDatasetReader``: streamed image–caption pairs from img2dataset-style WebDataset tar shards.

Layout (what img2dataset writes): ``KEY.jpg``/``.png``/``.webp``, ``KEY.txt`` (the caption) and
``KEY.json`` (metadata; its ``caption`` is used when ``.txt`` is missing). Tar parsing and
key grouping are the ``webdataset`` package's (:func:`webdataset.tariterators.tarfile_samples`);
which shard goes where, decoding and accounting are ours, because exact resume needs them.

**Order.** A per-epoch shard permutation is drawn from ``(seed, epoch)``; ranks take its shards
round-robin, then each rank's loader workers take the rank's shards round-robin (so a rank reads
the same shards whatever its worker count); within a shard, samples come in tar order.
Each (rank, worker) stream is therefore a pure function of the seed.

**Resume.** Every sample carries ``position = [role, epoch, shard, next_sample]``. A
:class:`StreamPosition` fed with the consumed batches yields a ``state_dict``;
:meth:`WebDatasetReader.load_state_dict` restarts each stream exactly there, skipping whole shards
unread and skipping samples inside a shard undecoded. PyTorch's DataLoader takes batches from its
workers round-robin, starting at worker 0; so that a resumed loader continues with the worker that
was next, worker ``w`` plays the *role* ``(w + batches_consumed) % num_workers``. This is exact for
``repeat=True`` (every stream infinite, so the round-robin never changes) and for
``num_workers=0``. :meth:`skip` (drop the next ``n`` samples) is the slower, count-based fallback.

**Quality.** Rejected samples are counted per reason (see :mod:`vilgkit.data.preprocess`); the
counts of the current process are in :meth:`skip_counts`, and every sample carries the skips its
worker made since its previous sample (``skipped``; a stream's last sample also carries the skips
after it) so a loader can sum them across workers.
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from vilgkit.data.preprocess import SkipStats, caption_sample, check_caption, load_image
from vilgkit.registry import DATASETS

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def expand_urls(urls: str | list[str]) -> list[str]:
    """Shard list from a brace pattern (``shards/{00000..00009}.tar``), a glob, a directory
    (all ``*.tar`` in it) or a list of those; sorted within each pattern, order kept across a list."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for url in braceexpand(str(item)):
            if Path(url).is_dir():
                out += sorted(str(p) for p in Path(url).glob("*.tar"))
            elif any(ch in url for ch in "*?["):
                out += sorted(glob.glob(url))
            else:
                out.append(url)
    if not out:
        raise FileNotFoundError(f"no WebDataset shards match {urls!r}")
    missing = [u for u in out if "://" not in u and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"shard(s) not found: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    return out


@DATASETS.register_module()
class WebDatasetReader(IterableDataset):
    """Iterable image–caption pairs from WebDataset shards (img2dataset layout).

    Args:
        urls: brace pattern, glob, directory or list of shard paths.
        image_size: output side (short side resized, centre-cropped).
        seed: seeds the per-epoch shard order.
        shuffle_shards: permute shards each epoch (otherwise: sorted order every epoch).
        repeat: loop over epochs forever (each epoch a new shard order); else one pass.
        rank, world_size: data-parallel position (default: from ``torch.distributed`` if initialised).
        max_caption_chars: longer captions are skipped (``long_caption``).
        max_skip_fraction: above this fraction of skipped samples, a ``DataQualityError`` names the shard.
        min_seen: the fraction is checked only after this many samples (per process).

    Samples: ``image``, ``caption``, ``question``/``answer`` (empty), ``lang``, ``key``,
    ``position`` and ``skipped`` (see the module docstring).
    """

    def __init__(
        self,
        urls: str | list[str],
        image_size: int = 256,
        seed: int = 0,
        shuffle_shards: bool = True,
        repeat: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        max_caption_chars: int = 300,
        max_skip_fraction: float = 0.05,
        min_seen: int = 50,
    ) -> None:
        super().__init__()
        self.urls = expand_urls(urls)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.shuffle_shards = bool(shuffle_shards)
        self.repeat = bool(repeat)
        self._placement_given = world_size is not None
        if world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank, world_size = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
        self._place(int(rank or 0), int(world_size))
        self.max_caption_chars = int(max_caption_chars)
        self.stats = SkipStats(max_skip_fraction, min_seen)
        self.epoch = 0
        self._start: dict[int, tuple[int, int, int]] = {}
        self._batches = 0
        self._skip_next = 0
        self._position: dict[int, list[int]] = {}

    def _place(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if len(self.urls) < world_size:
            raise ValueError(f"{len(self.urls)} shard(s) cannot feed {world_size} data-parallel ranks")
        self.rank, self.world_size = rank, world_size

    def set_placement(self, rank: int, world_size: int) -> None:
        """The data-parallel position the loader trains at (its strategy's), unless ``rank``/
        ``world_size`` were given at construction. A recipe builds its data sets before the process
        group exists, when ``torch.distributed`` would still say rank 0 of 1 on every rank."""
        if not self._placement_given:
            self._place(int(rank), int(world_size))

    # ------------------------------------------------------------------ order

    def set_epoch(self, epoch: int) -> None:
        """First epoch of the next iteration (for loaders that iterate one epoch at a time)."""
        self.epoch = int(epoch)

    def shards_for(self, epoch: int, role: int, num_roles: int) -> list[int]:
        """Indices (into :attr:`urls`) of the shards stream ``role`` of this rank reads in ``epoch``."""
        order = np.arange(len(self.urls))
        if self.shuffle_shards:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        # ranks first, then the rank's shards among its workers: a rank reads the same shards
        # whatever its number of loader workers
        mine = [int(s) for i, s in enumerate(order) if i % self.world_size == self.rank]
        return [s for j, s in enumerate(mine) if j % num_roles == role]

    # ------------------------------------------------------------------ resume

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restart every stream where :class:`StreamPosition` says the loader stopped."""
        self._start = {int(r): tuple(int(v) for v in pos) for r, pos in state.get("positions", {}).items()}
        self._batches = int(state.get("batches", 0))
        self._skip_next = 0

    def state_dict(self) -> dict[str, Any]:
        """Position of the samples this process has yielded (exact for ``num_workers=0``)."""
        return {"positions": {str(r): list(p) for r, p in self._position.items()}, "batches": self._batches}

    def skip(self, n: int) -> None:
        """Drop the next ``n`` samples of the next iteration (count-based fallback; they are decoded)."""
        self._skip_next = int(n)

    def skip_counts(self) -> dict[str, int]:
        """This process's counters (``seen``, ``kept``, ``skipped``, ``skipped/<reason>``)."""
        return self.stats.counts()

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # One sample is held back until the next is decoded (or the stream ends), so the skips after
        # a stream's last sample still reach the loader: they ride on that last sample, whose
        # position then points past them (a resume does not read them again).
        held: dict[str, Any] | None = None
        trailing: Counter = Counter()
        for sample, pending in self._stream():
            if sample is None:  # the end: ``pending`` holds the skips after the last sample
                trailing = pending
                break
            if held is not None:
                yield held
            held = sample
        if held is not None:
            if trailing:
                held["skipped"] = dict(Counter(held["skipped"]) + trailing)
                role, *_ = held["position"]
                held["position"] = [role, *self._end]
                self._position[role] = list(self._end)
            yield held

    def _stream(self) -> Iterator[tuple[dict[str, Any] | None, Counter]]:
        """``(sample, skips after it so far)`` for every kept sample; a final ``(None, trailing skips)``."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        per_rank = len(self.shards_for(self.epoch, 0, 1))
        if num_workers > per_rank:
            # a worker without a shard ends at once, and the loader's round-robin over workers (which
            # exact resume relies on) would change: refuse rather than silently resume elsewhere
            raise ValueError(
                f"{len(self.urls)} shard(s) give rank {self.rank} {per_rank} shard(s) for "
                f"{num_workers} loader workers: use at most {per_rank} workers or more shards"
            )
        role = (worker + self._batches) % num_workers
        epoch, shard_pos, sample_pos = self._start.get(role, (self.epoch, 0, 0))
        self._end = (epoch, shard_pos, sample_pos)
        to_skip, pending = self._skip_next, Counter()
        while True:
            shards = self.shards_for(epoch, role, num_workers)
            if not shards:
                break
            for k in range(shard_pos, len(shards)):
                url = self.urls[shards[k]]
                for idx, raw in self._raw_samples(url, pending):
                    if idx < sample_pos:
                        continue  # resumed inside this shard: already consumed, skip undecoded
                    self._end = (epoch, k, idx + 1)
                    sample = self._decode(raw, url, pending)
                    if sample is None:
                        continue
                    self._position[role] = [epoch, k, idx + 1]
                    if to_skip > 0:
                        to_skip -= 1
                        continue
                    sample["position"] = [role, epoch, k, idx + 1]
                    sample["skipped"], pending = dict(pending), Counter()
                    yield sample, pending
                sample_pos = 0
            if not self.repeat:
                break
            epoch, shard_pos = epoch + 1, 0
        yield None, pending

    def _raw_samples(self, url: str, pending: Counter) -> Iterator[tuple[int, dict[str, Any]]]:
        stream = tarfile_samples([{"url": url}])
        idx = 0
        while True:
            try:
                raw = next(stream)
            except StopIteration:
                return
            except Exception:  # truncated or malformed tar: the rest of the shard is lost
                self.stats.skip("corrupt_shard", url)
                pending["corrupt_shard"] += 1
                return
            yield idx, raw
            idx += 1

    def _decode(self, raw: dict[str, Any], url: str, pending: Counter) -> dict[str, Any] | None:
        key = raw.get("__key__", "?")
        where = f"{url}:{key}"
        image_bytes = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
        caption = raw.get("txt")
        if caption is None and "json" in raw:
            try:
                caption = json.loads(raw["json"]).get("caption")
            except (ValueError, AttributeError):
                caption = None
        reason = None
        if image_bytes is None:
            reason = "missing_image"
        else:
            caption, reason = check_caption(caption, self.max_caption_chars)
        if reason is None:
            try:
                image = load_image(image_bytes, self.image_size)
            except Exception:
                reason = "undecodable_image"
        if reason is not None:
            pending[reason] += 1
            self.stats.skip(reason, where)
            return None
        self.stats.ok()
        return caption_sample(image, caption, key)

    def iter_shard(self, index: int) -> Iterator[dict[str, Any]]:
        """The decoded samples of shard ``urls[index]`` in tar order, once (bad samples skipped and
        counted as in :meth:`__iter__`); what ``vilgkit tokenize`` reads, one shard per work unit."""
        url = self.urls[index]
        for _, raw in self._raw_samples(url, Counter()):
            sample = self._decode(raw, url, Counter())
            if sample is not None:
                yield sample

    def iter_texts(self, limit: int | None = None) -> Iterator[str]:
        """Captions of one pass in shard order (images are not decoded), for tokenizer fitting."""
        n = 0
        for url in self.urls:
            for _, raw in self._raw_samples(url, Counter()):
                caption, reason = check_caption(raw.get("txt"), self.max_caption_chars)
                if reason is None:
                    if limit is not None and n >= limit:
                        return
                    n += 1
                    yield caption


class StreamPosition:
    """Follows the batches a loader consumed from a :class:`WebDatasetReader` to build its state.

    Call :meth:`update` with every consumed (collated) batch; :meth:`state_dict` is what
    :meth:`WebDatasetReader.load_state_dict` needs; :attr:`skips` sums the workers' skip counts.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.positions: dict[str, list[int]] = {str(k): list(v) for k, v in state.get("positions", {}).items()}
        self.batches = int(state.get("batches", 0))
        self.skips: Counter[str] = Counter(state.get("skips", {}))

    def update(self, batch: dict[str, Any]) -> None:
        for role, *pos in batch["position"]:
            self.positions[str(role)] = pos
        for delta in batch.get("skipped", []):
            self.skips.update(delta)
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"positions": dict(self.positions), "batches": self.batches, "skips": dict(self.skips)}
