"""The stream's shuffle buffer: same samples in the same order as the direct definition, in
bounded memory."""

import numpy as np
import pytest

from training.shuffle import ShuffleBuffer


def _direct(capacity, pieces, seed):
    """The definition: concatenate, permute, emit the excess, keep the rest in order."""
    rng, buf, out = np.random.default_rng(seed), None, []
    for new in pieces:
        pool = new if buf is None else {k: np.concatenate([buf[k], new[k]]) for k in new}
        n = len(pool["index"])
        if capacity <= 0:
            out.append(pool)
            continue
        if n <= capacity:
            buf = pool
            continue
        perm = rng.permutation(n)
        excess = n - capacity
        out.append({k: v[perm[:excess]] for k, v in pool.items()})
        buf = {k: v[perm[excess:]] for k, v in pool.items()}
    if buf is not None and len(buf["index"]):
        perm = rng.permutation(len(buf["index"]))
        out.append({k: v[perm] for k, v in buf.items()})
    return out


def _pieces(sizes, seed=0):
    rng, start, pieces = np.random.default_rng(seed), 0, []
    for size in sizes:
        index = np.arange(start, start + size)
        pieces.append({"index": index, "w": rng.normal(size=(size, 2, 3)).astype(np.float16)})
        start += size
    return pieces


@pytest.mark.parametrize("capacity", [0, 1, 7, 50, 1000])
@pytest.mark.parametrize("sizes", [[16] * 10, [5, 40, 1, 0, 33, 16, 64, 2]])
def test_same_samples_in_the_same_order_as_the_definition(capacity, sizes):
    buffer, got = ShuffleBuffer(capacity, np.random.default_rng(3)), []
    for piece in _pieces(sizes):
        emitted = buffer.add(piece)
        if emitted is not None and len(emitted["index"]):
            got.append(emitted)
    final = buffer.drain()
    if final is not None:
        got.append(final)
    want = [p for p in _direct(capacity, _pieces(sizes), 3) if len(p["index"])]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g["index"], w["index"])
        np.testing.assert_array_equal(g["w"], w["w"])
    assert len(buffer) == 0 and buffer.drain() is None


def test_storage_stays_within_capacity_plus_the_largest_piece():
    buffer = ShuffleBuffer(50, np.random.default_rng(0))
    for piece in _pieces([16] * 40 + [30] * 5):
        buffer.add(piece)
        assert len(buffer) <= 50
    assert len(buffer.slots["index"]) <= 50 + 30


def test_resume_from_loaded_contents_continues_like_the_original():
    pieces = _pieces([16] * 12)
    whole = ShuffleBuffer(40, np.random.default_rng(5))
    for piece in pieces[:6]:
        whole.add(piece)
    state = np.random.default_rng(5)
    replay = ShuffleBuffer(40, state)
    for piece in pieces[:6]:
        replay.add({"index": piece["index"]})  # indices only, as the stream replays
    kept = replay.indices()
    resumed = ShuffleBuffer(40, state)
    resumed.load({"index": kept, "w": np.concatenate([p["w"] for p in pieces])[kept]})
    for piece in pieces[6:]:
        a, b = whole.add(piece), resumed.add(piece)
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["w"], b["w"])
    np.testing.assert_array_equal(whole.drain()["w"], resumed.drain()["w"])
