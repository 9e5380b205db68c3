"""``StatefulLoader``: an endless, resumable, rank-sharded batch stream.

Map-style data sets: every epoch draws a permutation from ``(seed, epoch)``, keeps this rank's
share (``perm[rank::world_size]`` after trimming to a multiple of ``world_size``) and cuts it into
batches. The state is ``(epoch, batches yielded in this epoch)``, counted when a batch is *handed
out* (not when a worker prefetched it), so after :meth:`load_state_dict` the next batch is exactly
the one an uninterrupted run would have received.

Iterable data sets (e.g. WebDataset streams), in order of preference:

1. *stream positions*: a data set with ``state_dict()``/``load_state_dict()`` whose samples carry a
   ``position`` (the built-in ``WebDatasetReader``) is followed batch by batch with a position
   tracker (``dataset.position_tracker(state)`` if it defines one, else the reader's
   ``StreamPosition``); on resume ``dataset.load_state_dict(...)`` restarts each stream exactly
   where the consumed batches ended, skipping whole shards unread;
2. ``dataset.skip(n)``: the state counts samples consumed this epoch and the data set skips the
   first ``n`` samples of this rank's stream on its next ``__iter__``;
3. otherwise the loader reads and discards the consumed batches.

Length grouping (map-style, ``group_by_length = k > 0``): each epoch's order is cut into windows of
``k`` batches; a window is sorted by ``dataset.sample_lengths()``, cut into batches, and its batches
are shuffled. Every epoch still visits the same samples once, batches pad less, and the order stays
a pure function of ``(seed, epoch)``, so resume is exact.

``dataset.set_epoch(epoch)`` is called at each epoch start when present. Iterable data sets shard
themselves across ranks (the loader does not split their streams); one with ``set_placement(rank,
world_size)`` is told the loader's rank first (data sets are built before the process group exists).

For bit-exact resume with ``num_workers > 0``, a data set's randomness should derive from the
sample index (the Shapes world does); worker processes restart on resume.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


def _epoch_seed(seed: int, epoch: int) -> int:
    # distinct, stable streams per (seed, epoch); 2**31-1 is prime, so collisions need huge epochs
    return (seed * 2_147_483_647 + epoch * 1_000_003 + 12_345) % (2**63 - 1)


class _EpochBatches:
    """Batch sampler over all epochs from ``(start_epoch, start_batch)`` onward (endless)."""

    def __init__(self, loader: StatefulLoader, start_epoch: int, start_batch: int) -> None:
        self.loader, self.start_epoch, self.start_batch = loader, start_epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        for epoch in itertools.count(self.start_epoch):
            batches = self.loader.epoch_batches(epoch)
            first = self.start_batch if epoch == self.start_epoch else 0
            yield from batches[first:]


class StatefulLoader:
    """Endless batches with an exact, resumable position.

    Args:
        dataset: a map-style ``Dataset`` (with ``__len__``) or an ``IterableDataset``.
        batch_size: samples per batch on this rank.
        collate_fn: batches a list of samples (``None``: PyTorch's default collate).
        seed: seeds the per-epoch permutations (and the worker seeds).
        shuffle: permute each epoch (map-style only); ``False`` keeps the data set order.
        drop_last: drop the incomplete last batch of an epoch (``False`` yields it smaller).
        num_workers: loader worker processes.
        rank: this data-parallel rank.
        world_size: number of data-parallel ranks.
        pin_memory: page-lock batches (for fast copies to a GPU).
        group_by_length: windows of this many batches are sorted by sample length before being
            cut into batches (0: off; map-style data sets with ``sample_lengths()`` only).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        group_by_length: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if group_by_length < 0:
            raise ValueError(f"group_by_length must be >= 0, got {group_by_length}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        self.iterable = isinstance(dataset, IterableDataset)
        self.group_by_length = int(group_by_length)
        self._lengths = self._sample_lengths() if self.group_by_length else None
        self.epoch = 0
        self.position = 0  # batches (map-style) or samples (iterable) consumed in this epoch
        self.batches_yielded = 0
        self._iter: Iterator[Any] | None = None
        if self.iterable and callable(getattr(dataset, "set_placement", None)):
            dataset.set_placement(rank, world_size)  # a stream shards itself: tell it this rank's place
        self._tracker = _stream_tracker(dataset, None) if self.iterable else None
        self._resume_stream: dict[str, Any] | None = None
        self._earlier_skips: dict[str, int] = {}  # skips counted by the trackers of finished epochs
        if not self.iterable:
            if not hasattr(dataset, "__len__"):
                raise TypeError(f"{type(dataset).__name__} is neither sized nor an IterableDataset")
            if self.batches_per_epoch == 0:
                raise ValueError(
                    f"data set of {len(dataset)} samples gives no batch of {batch_size} per rank over "
                    f"{world_size} rank(s) with drop_last={drop_last}: lower batch_size or add data"
                )

    def _sample_lengths(self) -> list[int]:
        lengths = getattr(self.dataset, "sample_lengths", None)
        if self.iterable or not callable(lengths):
            raise ValueError(
                f"group_by_length needs a map-style data set with sample_lengths() (the generator "
                f"stages' tokenized data has one); {type(self.dataset).__name__} has none"
            )
        out = [int(n) for n in lengths()]
        if len(out) != len(self.dataset):
            raise ValueError(
                f"{type(self.dataset).__name__}.sample_lengths() gave {len(out)} lengths for "
                f"{len(self.dataset)} samples"
            )
        return out

    # ------------------------------------------------------------------ map-style order
    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank gets per epoch (map-style only)."""
        per_rank = len(self.dataset) // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's sample indices for ``epoch``, in order."""
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        usable = n - n % self.world_size  # every rank gets the same number of samples
        return order[:usable][self.rank :: self.world_size]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of sample indices for ``epoch``."""
        idx = self.epoch_indices(epoch)
        if self.group_by_length:
            return self._length_grouped(idx, epoch)
        batches = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _length_grouped(self, idx: list[int], epoch: int) -> list[list[int]]:
        """Windows of ``group_by_length`` batches: sorted by length, cut, batch order shuffled."""
        lengths, size = self._lengths, self.batch_size
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed + 104_729, epoch))
        out: list[list[int]] = []
        window = self.group_by_length * size
        for start in range(0, len(idx), window):
            chunk = sorted(idx[start : start + window], key=lambda i: lengths[i])  # stable
            batches = [chunk[i : i + size] for i in range(0, len(chunk), size)]
            if self.drop_last and len(batches[-1]) < size:  # only the last window can end short
                batches.pop()
            if self.shuffle and len(batches) > 1:
                batches = [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]
            out += batches
        return out

    # ------------------------------------------------------------------ iteration
    def _make_iter(self) -> Iterator[Any]:
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed + 7919 * (self.rank + 1), self.epoch) + self.position)
        common = dict(
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            generator=gen,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        if not self.iterable:
            sampler = _EpochBatches(self, self.epoch, self.position)
            return iter(DataLoader(self.dataset, batch_sampler=sampler, **common))
        return self._iterable_stream(common)

    def _iterable_stream(self, common: dict[str, Any]) -> Iterator[Any]:
        skip, stream = self.position, self._resume_stream
        self._resume_stream = None
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            discard = 0
            if self._tracker is not None:
                # exact stream positions; a new epoch starts every stream afresh
                self.dataset.load_state_dict(stream or {})
            elif skip:
                if callable(getattr(self.dataset, "skip", None)):
                    self.dataset.skip(skip)
                else:
                    discard = skip // self.batch_size
            resumed = bool(skip or stream)
            skip, stream = 0, None
            loader = DataLoader(self.dataset, batch_size=self.batch_size, drop_last=self.drop_last, **common)
            got_any = False
            for i, batch in enumerate(loader):
                got_any = True
                if i < discard:
                    continue
                yield batch
            # resumed at (or within a batch of) an epoch's end: nothing was left of it, which is fine;
            # a fresh epoch without a batch is not
            if not got_any and not discard and not resumed:
                raise ValueError(f"{type(self.dataset).__name__} yielded no batch of {self.batch_size} in an epoch")
            # the epoch ended: the next one starts at sample 0
            yield _EPOCH_END

    def __iter__(self) -> StatefulLoader:
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            self._iter = self._make_iter()
        batch = next(self._iter)
        if self.iterable:
            while batch is _EPOCH_END:
                self.epoch, self.position = self.epoch + 1, 0
                if self._tracker is not None:
                    self._earlier_skips = self.counters()
                    self._tracker = _stream_tracker(self.dataset, None)
                batch = next(self._iter)
            self.position += _batch_len(batch, self.batch_size)
            if self._tracker is not None:
                if not (isinstance(batch, dict) and "position" in batch):
                    raise ValueError(
                        f"{type(self.dataset).__name__} has state_dict()/load_state_dict() but its "
                        "batches carry no 'position': cannot follow the stream for exact resume"
                    )
                self._tracker.update(batch)
        else:
            self.position += 1
            if self.position >= self.batches_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
        self.batches_yielded += 1
        return batch

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (plus the settings that must match on resume)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "unit": "samples" if self.iterable else "batches",
            "batches_yielded": self.batches_yielded,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "group_by_length": self.group_by_length,
            "dataset_len": None if self.iterable else len(self.dataset),
            "stream": self._tracker.state_dict() if self._tracker is not None else None,
            "earlier_skips": dict(self._earlier_skips),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; settings that change the order are refused with the differences.

        A map-style loader may resume under another world size or batch size: rank ``r`` takes
        ``perm[r::world_size]``, so every global batch is a contiguous slice of the epoch's
        permutation, and the position converts through the number of samples consumed globally.
        The continuation is exact when that number is a multiple of the new global batch;
        otherwise it rounds down (up to one global batch is seen again) with a warning.
        """
        strict = ("unit", "dataset_len", "group_by_length") + (
            ("seed", "shuffle") if not self.iterable else ("batch_size", "world_size")
        )
        if self.group_by_length:  # windows are cut per rank and batch size: no conversion between them
            strict += ("batch_size", "world_size")
        state = {"group_by_length": 0, **state}  # checkpoints from before the setting
        diffs = [
            f"{k}: checkpoint {state.get(k)!r} vs now {v!r}"
            for k, v in self.state_dict().items()
            if k in strict and state.get(k) != v
        ]
        if diffs:
            raise ValueError("cannot resume the data order: " + "; ".join(diffs))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if not self.iterable and (state["batch_size"], state["world_size"]) != (self.batch_size, self.world_size):
            consumed = self.position * int(state["batch_size"]) * int(state["world_size"])
            self.position, rest = divmod(consumed, self.batch_size * self.world_size)
            if rest:
                warnings.warn(
                    f"resuming with {self.world_size} rank(s) x batch {self.batch_size} from a position of "
                    f"{consumed} samples into epoch {self.epoch}: {rest} sample(s) will be seen again",
                    stacklevel=2,
                )
            if self.position >= self.batches_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
        self.batches_yielded = int(state.get("batches_yielded", 0))
        if self._tracker is not None:
            if state.get("stream") is None:
                raise ValueError("the checkpoint has no stream position for this data set")
            self._resume_stream = state["stream"]
            self._earlier_skips = dict(state.get("earlier_skips") or {})
            self._tracker = _stream_tracker(self.dataset, state["stream"])
        self._iter = None  # restart workers at the restored position

    def counters(self) -> dict[str, int]:
        """Skip/corrupt counters of the data set when it keeps them (for the metrics log).

        From the stream tracker (skips summed over all workers, carried in the samples) when there
        is one; else ``dataset.counters()`` or ``dataset.skip_counts()`` (a dict of ints), which
        with ``num_workers > 0`` only sees the main process.
        """
        skips = getattr(self._tracker, "skips", None)
        if skips is not None:
            out = dict(self._earlier_skips)
            for k, v in dict(skips).items():
                out[f"skipped/{k}"] = out.get(f"skipped/{k}", 0) + int(v)
            return out
        for name in ("counters", "skip_counts"):
            source = getattr(self.dataset, name, None)
            values = source() if callable(source) else source
            if isinstance(values, dict):
                return {str(k): int(v) for k, v in values.items() if isinstance(v, (int, float))}
        return {}


def _stream_tracker(dataset: Any, state: dict[str, Any] | None) -> Any:
    """A batch-by-batch position tracker for data sets that resume by stream position, else ``None``."""
    if not (callable(getattr(dataset, "state_dict", None)) and callable(getattr(dataset, "load_state_dict", None))):
        return None
    factory = getattr(dataset, "position_tracker", None)
    if callable(factory):
        return factory(state)
    try:  # the built-in WebDataset reader's protocol
        from vilgkit.data.webdataset_reader import StreamPosition
    except ImportError:
        return None
    return StreamPosition(state)


class _EpochEnd:
    def __repr__(self) -> str:
        return "<epoch end>"


_EPOCH_END = _EpochEnd()


def _batch_len(batch: Any, default: int) -> int:
    """Number of samples in a collated batch (first tensor's or list's length)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, (torch.Tensor, list, tuple)):
                return len(value)
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0], default) if isinstance(batch[0], (torch.Tensor, dict)) else len(batch)
    return default
