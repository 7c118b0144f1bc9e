"""Whole-shard reads of the per-sample arrays without zarr's chunk-by-chunk pipeline.

The store keeps ``w`` and ``image`` as one-sample chunks inside shard objects (DESIGN.md, store
contract). Zarr 3.1 decodes such a shard one chunk at a time through asyncio, 1-2k chunks/s on
a 2-core machine, which left a GPU training run waiting on its input. The objects our writer
makes (zarr's defaults: bytes little-endian + zstd inside; an index of (offset, length) uint64
pairs, little-endian, with a crc32c, at the end) are simple to read directly: one GET, check the
index checksum, decompress every chunk into one array. An array stored with any other codecs
gets no ``ShardFormat`` and is read through zarr as before.

Errors are ``ValueError`` with what is wrong; the reader turns them into its one-line
StoreError that points at ``advmix store validate --full``.
"""

from __future__ import annotations

from dataclasses import dataclass

import google_crc32c
import numpy as np
import zstandard

_EMPTY = np.iinfo(np.uint64).max  # offset and length of a chunk that was never written


@dataclass(frozen=True)
class ShardFormat:
    """How to decode one array's objects: ``chunks`` one-sample chunks of ``sample`` in a
    shard object (``w``, ``image``), or, when not ``sharded``, one plain zstd chunk of
    ``chunks`` samples (``label``)."""

    chunks: int  # samples per object (the layout's shard size)
    sample: tuple[int, ...]  # one sample's shape
    dtype: np.dtype  # little-endian
    fill_value: object
    sharded: bool = True

    @classmethod
    def of(cls, array) -> ShardFormat | None:
        """The format of a zarr array, or None where this module cannot decode it exactly."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
        from zarr.codecs.bytes import Endian
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        little = lambda c: isinstance(c, BytesCodec) and c.endian in (None, Endian.little)  # noqa: E731
        zstd_bytes = lambda cs: len(cs) == 2 and little(cs[0]) and isinstance(cs[1], ZstdCodec)  # noqa: E731
        codecs = tuple(array.metadata.codecs) if array.metadata.zarr_format == 3 else ()
        sample, dtype = tuple(array.shape[1:]), np.dtype(array.dtype).newbyteorder("<")
        if zstd_bytes(codecs) and tuple(array.chunks[1:]) == sample:
            return cls(array.chunks[0], sample, dtype, array.fill_value, sharded=False)
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        index = sharding.index_codecs
        if not (
            zstd_bytes(sharding.codecs)
            and len(index) == 2 and little(index[0]) and isinstance(index[1], Crc32cCodec)
            and sharding.index_location == ShardingCodecIndexLocation.end
            and tuple(sharding.chunk_shape) == (1, *sample)
        ):  # fmt: skip
            return None
        return cls(array.shards[0], sample, dtype, array.fill_value)


def decode_shard(blob: bytes, fmt: ShardFormat, count: int) -> np.ndarray:
    """The first ``count`` samples [count, *sample] of one shard object."""
    if not fmt.sharded:
        return _decode_plain(blob, fmt, count)
    index_size = 16 * fmt.chunks + 4
    if len(blob) < index_size:
        raise ValueError(f"shard object of {len(blob)} bytes is shorter than its index")
    index_bytes = blob[-index_size:-4]
    if google_crc32c.value(index_bytes) != int.from_bytes(blob[-4:], "little"):
        raise ValueError("shard index checksum mismatch")
    index = np.frombuffer(index_bytes, dtype="<u8").reshape(fmt.chunks, 2)
    out = np.empty((count, *fmt.sample), dtype=fmt.dtype)
    if count == 0:
        return out
    chunk_bytes = out[0].nbytes
    index = index[:count]
    written = ~((index[:, 0] == _EMPTY) & (index[:, 1] == _EMPTY))
    out[~written] = fmt.fill_value
    frames = index[written]
    if len(frames) == 0:
        return out
    if (frames[:, 0] + frames[:, 1] > len(blob) - index_size).any():
        raise ValueError("a chunk lies outside the shard object")
    # One C call for every frame, without the GIL: the stream's prefetch thread decodes while
    # the training loop runs (numcodecs' per-chunk decode holds the GIL: 2x slower, serial).
    try:
        decoded = zstandard.ZstdDecompressor().multi_decompress_to_buffer(
            zstandard.BufferWithSegments(blob, frames.astype("<u8").tobytes()),
            decompressed_sizes=np.full(len(frames), chunk_bytes, dtype="<u8").tobytes(),
        )
        raw = b"".join(decoded)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if len(raw) != len(frames) * chunk_bytes:
        raise ValueError(f"chunks decode to {len(raw)} bytes, expected {len(frames) * chunk_bytes}")
    out[written] = np.frombuffer(raw, dtype=fmt.dtype).reshape(len(frames), *fmt.sample)
    return out


def _decode_plain(blob: bytes, fmt: ShardFormat, count: int) -> np.ndarray:
    """One zstd chunk of ``fmt.chunks`` samples (a short last shard is padded to full size)."""
    size = fmt.chunks * int(np.prod(fmt.sample, dtype=np.int64)) * fmt.dtype.itemsize
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from None
    if len(raw) != size:
        raise ValueError(f"chunk decodes to {len(raw)} bytes, expected {size}")
    return np.frombuffer(raw, dtype=fmt.dtype).reshape(fmt.chunks, *fmt.sample)[:count].copy()
