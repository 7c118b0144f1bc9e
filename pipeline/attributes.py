"""Named binary attributes per image, read on the driver: the CelebA layout, or a table.

- **CelebA** (``celeba:SPLIT?root=DIR``): ``DIR/img_align_celeba/``, ``DIR/list_attr_celeba.txt``
  (a count, the 40 attribute names, then one row per image of ``-1``/``1`` values) and
  ``DIR/list_eval_partition.txt`` (image, 0 train / 1 valid / 2 test).
- **A table** (``--attributes FILE``, CSV or Parquet) beside an image folder or a Parquet of
  images: a key column (``id``, ``image``, ``file`` or ``filename``: the image's path relative
  to the folder, or the Parquet row's id) and one column per attribute.

Values are ``-1``/``1`` (CelebA's) or ``0``/``1``; both are stored as 0/1. Anything else, a
row of the wrong length, a duplicate key or a missing file is one line naming where.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import fsspec

from advmix.errors import DataError
from schemas.urls import one_line, redact

KEY_COLUMNS = ("id", "image", "file", "filename")
SPLIT_CODES = {"train": "0", "valid": "1", "test": "2"}


@dataclass(frozen=True)
class AttributeTable:
    names: tuple[str, ...]
    rows: dict[str, tuple[int, ...]]  # key -> one 0/1 value per name


def _read_text(url: str, storage_options: dict) -> str:
    try:
        with fsspec.open(url, "rt", **storage_options) as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{redact(url)}: not found") from None
    except Exception as exc:  # credentials, endpoint, encoding: one line
        raise DataError(f"cannot read {redact(url)}: {one_line(exc)}") from None


def _binary(value, where: str) -> int:
    text = str(value).strip()
    if text in ("1", "1.0", "True", "true"):
        return 1
    if text in ("-1", "0", "-1.0", "0.0", "False", "false"):
        return 0
    raise DataError(f"{where}: attribute value {text!r} is not -1, 0 or 1")


def _table(names: list[str], rows: list[tuple[str, str, list]], where: str) -> AttributeTable:
    """``rows``: (where in the file, key, values)."""
    from schemas.layout import Layout

    try:  # names the store can hold (identifiers, not reserved index columns)
        Layout(num_samples=1, shard_size=1, num_ws=1, w_dim=1, attribute_names=tuple(names))
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    out: dict[str, tuple[int, ...]] = {}
    for line, key, values in rows:
        if len(values) != len(names):
            raise DataError(f"{where}, {line}: {len(values)} values for {len(names)} attributes")
        if key in out:
            raise DataError(f"{where}, {line}: {key!r} is listed twice")
        out[key] = tuple(_binary(v, f"{where}, {line}") for v in values)
    return AttributeTable(tuple(names), out)


def read_table(url: str, storage_options: dict | None = None) -> AttributeTable:
    """A CSV or Parquet attribute table (see the module docstring)."""
    import pandas as pd

    storage_options = storage_options or {}
    try:
        if url.lower().endswith(".parquet"):
            with fsspec.open(url, "rb", **storage_options) as f:
                frame = pd.read_parquet(io.BytesIO(f.read()))
        else:
            frame = pd.read_csv(io.StringIO(_read_text(url, storage_options)), dtype=str)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read the attribute table {redact(url)}: {one_line(exc)}") from None
    key = next((c for c in frame.columns if str(c).lower() in KEY_COLUMNS), None)
    if key is None or frame.shape[1] < 2:
        raise DataError(f"{redact(url)}: needs a key column ({', '.join(KEY_COLUMNS)}) and at "
                        "least one attribute column")  # fmt: skip
    names = [str(c) for c in frame.columns if c != key]
    rows = [(f"row {i + 2}", str(record[key]), [record[n] for n in names])
            for i, record in enumerate(frame.to_dict("records"))]  # fmt: skip
    return _table(names, rows, redact(url))


def read_celeba(root: str, split: str, storage_options: dict | None = None) -> AttributeTable:
    """The attributes of CelebA's images in ``split`` (train, valid, test or all), keyed by
    file name, in the order of ``list_attr_celeba.txt``."""
    storage_options = storage_options or {}
    root = root.rstrip("/")
    where = f"{redact(root)}/list_attr_celeba.txt"
    lines = [line for line in _read_text(f"{root}/list_attr_celeba.txt",
                                          storage_options).splitlines() if line.strip()]  # fmt: skip
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"{where}: expected an image count, then the attribute names")
    names = lines[1].split()
    rows = [(f"line {i + 3}", parts[0], parts[1:])
            for i, parts in enumerate(line.split() for line in lines[2:])]  # fmt: skip
    if int(lines[0]) != len(rows):
        raise DataError(f"{where}: says {int(lines[0])} images, lists {len(rows)}")
    table = _table(names, rows, where)
    if split == "all":
        return table
    partition = _read_text(f"{root}/list_eval_partition.txt", storage_options).splitlines()
    wanted = set()
    for i, line in enumerate(partition):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{redact(root)}/list_eval_partition.txt, line {i + 1}: expected "
                            "'<image> 0|1|2'")  # fmt: skip
        if parts[1] == SPLIT_CODES[split]:
            wanted.add(parts[0])
    return AttributeTable(table.names, {k: v for k, v in table.rows.items() if k in wanted})
