"""training.stream: disjoint coverage over ranks and workers, exact mid-epoch resume, buckets."""

import numpy as np
import pytest
from train_helpers import write_store

from schemas.reader import open_store
from schemas.testing import moto_s3
from training.stream import LatentStream, StreamError, balanced_bounds


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    # 100 samples in shards of 16: the last shard (4 samples) is short on purpose.
    return write_store(str(tmp_path_factory.mktemp("stream") / "s.zarr"), num_samples=100)


def indices(stream: LatentStream) -> list[int]:
    return [i for batch in stream.loader() for i in batch["index"].tolist()]


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 0), (3, 2), (4, 1)])
def test_ranks_and_workers_partition_the_store(store_url, world, workers):
    per_rank = []
    for rank in range(world):
        stream = LatentStream(
            store_url, batch_size=5, seed=3, buffer_size=24, rank=rank, world_size=world,
            num_workers=workers,
        )  # fmt: skip
        stream.set_epoch(2)
        seen = indices(stream)
        assert len(seen) == sum(stream.worker_sizes())
        assert len([b for b in stream.loader()]) == stream.num_batches()
        per_rank.append(seen)
    flat = [i for seen in per_rank for i in seen]
    assert len(flat) == len(set(flat)) == 100  # no duplicates, no losses
    assert sorted(flat) == list(range(100))
    sizes = [len(s) for s in per_rank]
    assert max(sizes) - min(sizes) <= 1  # the remainder is spread, one sample at most


def test_remainder_policy_spreads_one_sample_at_most():
    sizes = [b - a for a, b in (balanced_bounds(10, 3, r) for r in range(3))]
    assert sizes == [3, 3, 4] and sum(sizes) == 10
    assert [balanced_bounds(2, 4, r) for r in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]


def test_order_depends_on_seed_and_epoch_only(store_url):
    def order(seed, epoch):
        stream = LatentStream(store_url, batch_size=8, seed=seed, buffer_size=24)
        stream.set_epoch(epoch)
        return indices(stream)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert order(0, 0) != list(range(100))  # shuffled across shard boundaries


def test_batches_carry_the_stored_sample(store_url):
    store = open_store(store_url)
    stream = LatentStream(store, batch_size=9, seed=0, buffer_size=30, num_workers=0)
    for batch in stream.loader():
        for j, i in enumerate(batch["index"].tolist()):
            sample = store.read_sample(i)
            assert np.array_equal(batch["w"][j].numpy(), sample.w.astype(np.float32))
            assert int(batch["label"][j]) == sample.label
            assert np.array_equal(batch["image"][j].numpy(), sample.image)
        assert batch["w"].dtype.is_floating_point and batch["image"].dtype.itemsize == 1


@pytest.mark.parametrize("workers, stop_after", [(0, 3), (2, 5), (2, 1)])
def test_resume_mid_epoch_yields_exactly_the_rest(store_url, workers, stop_after):
    def stream():
        return LatentStream(store_url, batch_size=7, seed=5, buffer_size=20, num_workers=workers)

    full_stream = stream()
    full_stream.set_epoch(1)
    full = [b["index"].tolist() for b in full_stream.loader()]

    first = stream()
    first.set_epoch(1)
    head = []
    for i, batch in enumerate(first.loader()):
        first.observe(batch)
        head.append(batch["index"].tolist())
        if i + 1 == stop_after:
            break
    state = first.state_dict()
    assert state["samples_consumed"] == sum(len(b) for b in head)

    resumed = stream()
    resumed.load_state_dict(state)
    tail = [b["index"].tolist() for b in resumed.loader()]
    assert head + tail == full
    seen = [i for b in head + tail for i in b]
    assert sorted(seen) == list(range(100))


def test_resume_refuses_a_different_setup(store_url):
    a = LatentStream(store_url, batch_size=7, seed=5, num_workers=0)
    b = LatentStream(store_url, batch_size=8, seed=5, num_workers=0)
    with pytest.raises(StreamError, match="batch_size"):
        b.load_state_dict(a.state_dict())


def test_single_samples_without_batch_size(store_url):
    stream = LatentStream(store_url, batch_size=None, seed=0, buffer_size=0, shuffle=False)
    items = list(stream.loader())
    assert [int(x["index"]) for x in items] == list(range(100))
    assert tuple(items[0]["w"].shape) == (8, 32) and tuple(items[0]["image"].shape) == (3, 32, 32)


def test_streams_from_the_s3_emulator(tmp_path):
    with moto_s3() as options:
        url = write_store("s3://advmix/t.zarr", num_samples=40, storage_options=options)
        stream = LatentStream(url, options, batch_size=8, seed=0, buffer_size=16, num_workers=0)
        assert sorted(indices(stream)) == list(range(40))


def test_generator_fingerprint_is_checked(store_url):
    from schemas.errors import StoreError

    with pytest.raises(StoreError, match="generator mismatch"):
        LatentStream(store_url, expect_generator="cd" * 32)
