"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

Format: 2 zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
dimension, then the data in C order. We check every size so a truncated download gives a clear
error instead of a silently short array.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from advmix.errors import DataError

_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array stored in an IDX file, raising DataError on any malformed content."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such IDX file")
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = _DTYPES[data[2]], data[3]
    header_end = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_end:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_end])
    expected = int(np.prod(shape)) * dtype.itemsize
    payload = len(data) - header_end
    if payload != expected:
        raise DataError(
            f"{path}: IDX payload is {payload} bytes, header {shape} needs {expected} (truncated?)"
        )
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=header_end)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)
