import gzip
import struct

import numpy as np
import pytest

from advmix.errors import DataError
from advmix.idx import read_idx


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_reads_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(_idx_bytes(array))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.gz"), array)


def test_reads_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    header = struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3)
    (tmp_path / "ints").write_bytes(header + values.tobytes())
    assert read_idx(tmp_path / "ints").tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"garbage that is not idx", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (struct.pack(">BBBBII", 0, 0, 8, 2, 10, 10) + bytes(99), "truncated?"),
    ],
)
def test_malformed_files_raise_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert "\n" not in str(info.value)


def test_truncated_gzip_is_reported(tmp_path):
    array = np.zeros((50, 28, 28), dtype=np.uint8)
    packed = gzip.compress(_idx_bytes(array))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such IDX file"):
        read_idx(tmp_path / "absent.gz")
