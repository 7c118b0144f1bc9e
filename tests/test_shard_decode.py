"""Whole-shard decoding without zarr's per-chunk pipeline: same arrays as zarr, or an error."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from store_helpers import write_store
from zarr.codecs import BloscCodec

from schemas.errors import StoreError
from schemas.reader import open_store
from schemas.shard_decode import ShardFormat, decode_shard

SHAPE, CHUNK, SHARD = (10, 3, 5), (1, 3, 5), (4, 3, 5)


def _array(tmp_path, dtype="float32", **kw):
    root = tmp_path / "a.zarr"
    return zarr.create_array(
        str(root), shape=SHAPE, chunks=CHUNK, shards=SHARD, dtype=dtype, fill_value=7, **kw
    ), root


def _objects(root, shard: int) -> bytes:
    return (root / "c" / str(shard) / "0" / "0").read_bytes()


@pytest.mark.parametrize("dtype", ["float16", "float32", "uint8"])
def test_decodes_what_zarr_reads_including_unwritten_chunks_and_a_short_shard(tmp_path, dtype):
    array, root = _array(tmp_path, dtype)
    values = np.random.default_rng(0).normal(size=SHAPE) * 50
    array[0:4] = values[0:4].astype(dtype)
    array[5] = values[5].astype(dtype)  # shard 1 keeps chunks 4, 6, 7 unwritten
    array[8:10] = values[8:10].astype(dtype)  # shard 2 holds only 2 of its 4 samples
    fmt = ShardFormat.of(array)
    assert fmt is not None and fmt.chunks == 4 and fmt.sample == (3, 5)
    for shard, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        got = decode_shard(_objects(root, shard), fmt, b - a)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, array[a:b])
    assert (decode_shard(_objects(root, 1), fmt, 4)[[0, 2, 3]] == 7).all()


def test_plain_one_chunk_per_shard_arrays_decode_like_zarr(tmp_path):
    root = tmp_path / "labels.zarr"
    labels = zarr.create_array(str(root), shape=(10,), chunks=(4,), dtype="int64", fill_value=0)
    labels[:] = np.arange(10) * 3 - 7
    fmt = ShardFormat.of(labels)
    assert fmt is not None and not fmt.sharded and fmt.chunks == 4
    for shard, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        got = decode_shard((root / "c" / str(shard)).read_bytes(), fmt, b - a)
        np.testing.assert_array_equal(got, labels[a:b])
    with pytest.raises(ValueError, match="zstd"):
        decode_shard(b"not zstd", fmt, 4)


def test_other_codecs_and_chunkings_are_left_to_zarr(tmp_path):
    blosc, _ = _array(tmp_path, compressors=BloscCodec())
    assert ShardFormat.of(blosc) is None
    plain = zarr.create_array(
        str(tmp_path / "p.zarr"), shape=SHAPE, chunks=SHARD, dtype="f4", compressors=BloscCodec()
    )
    assert ShardFormat.of(plain) is None
    two = zarr.create_array(
        str(tmp_path / "t.zarr"), shape=SHAPE, chunks=(2, 3, 5), shards=SHARD, dtype="f4"
    )
    assert ShardFormat.of(two) is None


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "index checksum mismatch"),
        (lambda b: b[:40], "shorter than its index"),
        (lambda b: b[:8] + b[9:], "a chunk lies outside the shard object"),
        (lambda b: b[:1] + bytes([b[1] ^ 0xFF]) + b[2:], "zstd"),  # a frame's magic number
    ],
)
def test_damaged_objects_are_errors(tmp_path, damage, message):
    array, root = _array(tmp_path)
    array[:] = np.ones(SHAPE, dtype="f4")
    with pytest.raises(ValueError, match=message):
        decode_shard(damage(_objects(root, 0)), ShardFormat.of(array), 4)


def test_a_corrupt_chunk_in_a_store_is_a_one_line_store_error(tmp_path):
    path = tmp_path / "store.zarr"
    write_store(str(path))
    shard = path / "w" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF  # inside the first chunk's zstd frame; the index is at the end
    shard.write_bytes(bytes(data))
    store = open_store(str(path))
    with pytest.raises(StoreError) as exc:
        store.read_arrays(0)
    message = str(exc.value)
    assert "\n" not in message and "shard 0 is damaged" in message  # caught by its sha256
    assert "advmix store validate --full" in message
    np.testing.assert_array_equal(store.read_arrays(1)["label"], store.read_shard(1).labels)
