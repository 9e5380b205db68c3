"""StatefulLoader: deterministic order, rank sharding, exact resume (map-style and iterable)."""

import itertools

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

from vilgkit.engine.loader import StatefulLoader


class Indexed(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i, "x": torch.tensor([float(i)])}


def ids(batch):
    return batch["index"].tolist()


def take(loader, n):
    return [ids(next(loader)) for _ in range(n)]


def test_epoch_is_a_permutation_and_seeded():
    a = StatefulLoader(Indexed(20), 4, seed=1)
    b = StatefulLoader(Indexed(20), 4, seed=1)
    c = StatefulLoader(Indexed(20), 4, seed=2)
    first = take(a, 5)
    assert sorted(itertools.chain(*first)) == list(range(20))
    assert first == take(b, 5)
    assert first != take(c, 5)
    assert take(a, 5) != first  # the next epoch has another order
    assert a.epoch == 2 and a.position == 0


def test_unshuffled_and_drop_last():
    loader = StatefulLoader(Indexed(10), 4, shuffle=False)
    assert take(loader, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]  # 8, 9 dropped
    keep = StatefulLoader(Indexed(10), 4, shuffle=False, drop_last=False)
    assert take(keep, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("cut", [1, 3, 5, 7])
def test_resume_mid_epoch_gives_the_same_batches(cut):
    ref = take(StatefulLoader(Indexed(23), 4, seed=5), 12)
    first = StatefulLoader(Indexed(23), 4, seed=5)
    head = take(first, cut)
    state = first.state_dict()
    second = StatefulLoader(Indexed(23), 4, seed=5)
    second.load_state_dict(state)
    assert head + take(second, 12 - cut) == ref


def test_resume_with_a_worker_process():
    ref = take(StatefulLoader(Indexed(16), 4, seed=3), 6)
    first = StatefulLoader(Indexed(16), 4, seed=3, num_workers=1)
    head = take(first, 3)  # the worker prefetched more; the state counts what was handed out
    state = first.state_dict()
    second = StatefulLoader(Indexed(16), 4, seed=3, num_workers=1)
    second.load_state_dict(state)
    assert head + take(second, 3) == ref


def test_ranks_get_disjoint_equal_shares():
    shares = [StatefulLoader(Indexed(22), 2, seed=0, rank=r, world_size=3) for r in range(3)]
    per_rank = [list(itertools.chain(*take(s, s.batches_per_epoch))) for s in shares]
    assert all(len(p) == 6 for p in per_rank)  # 22 -> 21 usable -> 7 each -> 3 batches of 2
    flat = list(itertools.chain(*per_rank))
    assert len(set(flat)) == len(flat)


def test_refuses_a_changed_order_and_impossible_sizes():
    loader = StatefulLoader(Indexed(20), 4, seed=1)
    next(loader)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="seed: checkpoint 1 vs now 2"):
        StatefulLoader(Indexed(20), 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="dataset_len"):
        StatefulLoader(Indexed(21), 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="no batch of 8"):
        StatefulLoader(Indexed(10), 8, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        StatefulLoader(Indexed(10), 2, rank=2, world_size=2)


def test_resume_under_another_world_size():
    """Two ranks x batch 3 resumed as one rank x batch 6: the same global batches follow."""
    ranks = [StatefulLoader(Indexed(30), 3, seed=9, rank=r, world_size=2) for r in range(2)]
    single = StatefulLoader(Indexed(30), 6, seed=9)
    for _ in range(3):  # global batches agree step by step
        assert sorted(ids(next(ranks[0])) + ids(next(ranks[1]))) == sorted(ids(next(single)))
    resumed = StatefulLoader(Indexed(30), 6, seed=9)
    resumed.load_state_dict(ranks[0].state_dict())
    assert [sorted(ids(next(resumed))) for _ in range(4)] == [sorted(ids(next(single))) for _ in range(4)]
    odd = StatefulLoader(Indexed(30), 4, seed=9)
    with pytest.warns(UserWarning, match="2 sample\\(s\\) will be seen again"):
        odd.load_state_dict(ranks[0].state_dict())  # 18 samples consumed = 4 batches of 4 + 2


class Stream(IterableDataset):
    """Ten samples per epoch whose values depend on the epoch; optional fast ``skip``."""

    def __init__(self, with_skip):
        self.epoch, self._skip, self.with_skip, self.skipped_calls = 0, 0, with_skip, []

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        start, self._skip = self._skip, 0
        for i in range(start, 10):
            yield {"index": 100 * self.epoch + i}

    def counters(self):
        return {"corrupt": 2, "empty_caption": 1}


class StreamWithSkip(Stream):
    def skip(self, n):
        self.skipped_calls.append(n)
        self._skip = n


@pytest.mark.parametrize("cls", [Stream, StreamWithSkip])
def test_iterable_resume(cls):
    ref = take(StatefulLoader(cls(False), 3), 7)
    assert ref[3] == [100, 101, 102]  # a new epoch after 3 full batches (drop_last)
    first = StatefulLoader(cls(False), 3)
    head = take(first, 2)
    state = first.state_dict()
    assert state["unit"] == "samples" and state["position"] == 6
    ds = cls(False)
    second = StatefulLoader(ds, 3)
    second.load_state_dict(state)
    assert head + take(second, 5) == ref
    if cls is StreamWithSkip:
        assert ds.skipped_calls == [6]
    assert second.counters() == {"corrupt": 2, "empty_caption": 1}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three WebDataset shards of 5 Shapes samples; one sample has undecodable image bytes."""
    import io

    import webdataset as wds
    from PIL import Image

    from vilgkit.data.shapes import ShapesDataset

    root = tmp_path_factory.mktemp("shards")
    ds = ShapesDataset(size=15, image_size=16)
    for s in range(3):
        with wds.TarWriter(str(root / f"{s:05d}.tar")) as tar:
            for i in range(5 * s, 5 * s + 5):
                buf = io.BytesIO()
                Image.fromarray(ds.render(i)).save(buf, "PNG")
                png = b"not an image" if i == 7 else buf.getvalue()
                tar.write({"__key__": f"{i:05d}", "png": png, "txt": ds.describe(i)["caption"]})
    return root


def keys(batch):
    return list(batch["key"])


@pytest.mark.parametrize("workers,repeat", [(0, False), (2, True)])
def test_webdataset_reader_resumes_by_stream_position(shards, workers, repeat):
    from vilgkit.data import collate
    from vilgkit.data.webdataset_reader import WebDatasetReader

    def loader():
        reader = WebDatasetReader(str(shards), image_size=16, seed=4, repeat=repeat, max_skip_fraction=0.5, min_seen=10)
        return StatefulLoader(reader, 3, collate, seed=4, num_workers=workers)

    ref_loader = loader()
    ref = [keys(next(ref_loader)) for _ in range(9)]  # 14 good samples per epoch: crosses an epoch
    assert len({k for b in ref for k in b}) == 14
    first = loader()
    head = [keys(next(first)) for _ in range(5)]
    state = first.state_dict()
    assert state["stream"]["positions"]
    second = loader()
    second.load_state_dict(state)
    assert head + [keys(next(second)) for _ in range(4)] == ref
    # the broken sample is counted once per epoch read, summed over workers, and survives the resume
    assert ref_loader.counters()["skipped/undecodable_image"] >= 1
    assert second.counters() == ref_loader.counters()


class Sized(Indexed):
    """Indexed samples with a length each (what length grouping sorts by)."""

    def __init__(self, n, seed=0):
        super().__init__(n)
        self.lengths = torch.randint(1, 40, (n,), generator=torch.Generator().manual_seed(seed)).tolist()

    def sample_lengths(self):
        return self.lengths


def test_length_grouping_keeps_the_epoch_and_pads_less():
    data = Sized(64)
    plain = StatefulLoader(data, 4, seed=3)
    grouped = StatefulLoader(data, 4, seed=3, group_by_length=4)
    a, b = take(plain, 16), take(grouped, 16)
    assert sorted(itertools.chain(*a)) == sorted(itertools.chain(*b)) == list(range(64))  # same epoch, each once
    for window in range(4):  # each window of 4 batches holds the same samples as without grouping
        span = slice(4 * window, 4 * window + 4)
        assert sorted(itertools.chain(*a[span])) == sorted(itertools.chain(*b[span]))
    padded = [sum(max(data.lengths[i] for i in batch) * len(batch) for batch in run) for run in (a, b)]
    real = sum(data.lengths)
    assert padded[1] - real < 0.5 * (padded[0] - real)  # less than half the padding
    assert take(grouped, 16) != b  # the next epoch has another order
    # inside a window the batches are sorted runs of lengths, but their order is shuffled
    longest = [[max(data.lengths[i] for i in batch) for batch in b[w : w + 4]] for w in range(0, 16, 4)]
    assert any(window != sorted(window) for window in longest)


@pytest.mark.parametrize("cut", [1, 6, 11])
def test_length_grouping_resumes_exactly(cut):
    ref = take(StatefulLoader(Sized(50), 4, seed=5, group_by_length=3), 20)
    first = StatefulLoader(Sized(50), 4, seed=5, group_by_length=3)
    head = take(first, cut)
    second = StatefulLoader(Sized(50), 4, seed=5, group_by_length=3)
    second.load_state_dict(first.state_dict())
    assert head + take(second, 20 - cut) == ref


def test_length_grouping_refusals():
    with pytest.raises(ValueError, match="group_by_length needs a map-style data set with sample_lengths"):
        StatefulLoader(Indexed(20), 4, group_by_length=2)
    grouped = StatefulLoader(Sized(40), 4, seed=1, group_by_length=2)
    next(grouped)
    with pytest.raises(ValueError, match="group_by_length: checkpoint 2 vs now 0"):
        StatefulLoader(Sized(40), 4, seed=1).load_state_dict(grouped.state_dict())
    with pytest.raises(ValueError, match="batch_size: checkpoint 4 vs now 8"):
        StatefulLoader(Sized(40), 8, seed=1, group_by_length=2).load_state_dict(grouped.state_dict())
    old = StatefulLoader(Sized(40), 4, seed=1)
    next(old)
    state = old.state_dict()
    state.pop("group_by_length")  # a checkpoint from before the setting resumes ungrouped
    resumed = StatefulLoader(Sized(40), 4, seed=1)
    resumed.load_state_dict(state)
    assert resumed.position == 1
