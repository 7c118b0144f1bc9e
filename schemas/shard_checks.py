"""Checks of what one shard write is given: arrays, attributes and index rows.

Every problem is a one-line ``StoreError`` naming the shard, raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.errors import StoreError
from schemas.layout import TEXT_COLUMNS, WRITER_COLUMNS, Layout

Rows = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]


def check_arrays(layout: Layout, shard: int, count: int, w, labels, images) -> tuple:
    """``w``, ``labels`` and ``images`` of one shard in their stored dtypes, or a StoreError
    naming what is wrong."""
    w = np.asarray(w)
    expected = (count, layout.num_ws, layout.w_dim)
    if w.shape != expected:
        raise StoreError(
            f"shard {shard}: w has shape {w.shape}, expected {expected} (a shard is written whole)"
        )
    if not np.issubdtype(w.dtype, np.floating) or not np.isfinite(w).all():
        raise StoreError(f"shard {shard}: w must be finite floats")
    with np.errstate(over="ignore"):  # reported below, as a StoreError
        w = w.astype(layout.w_dtype, copy=False)
    if not np.isfinite(w).all():
        raise StoreError(f"shard {shard}: w overflows {layout.w_dtype}")
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(
            f"shard {shard}: labels must be {count} integers, got {labels.dtype} {labels.shape}"
        )
    labels = labels.astype(np.int64, copy=False)
    if layout.label_names and (labels.min() < 0 or labels.max() >= len(layout.label_names)):
        raise StoreError(
            f"shard {shard}: labels must be in [0, {len(layout.label_names)}), got "
            f"{labels.min()}..{labels.max()}"
        )
    if (images is None) != (layout.image_shape is None):
        want = "needs images" if images is None else "has no image array"
        raise StoreError(f"shard {shard}: this store {want}")
    if images is not None:
        images = np.asarray(images)
        if images.shape != (count, *layout.image_shape) or images.dtype != np.uint8:
            raise StoreError(
                f"shard {shard}: images must be uint8 {(count, *layout.image_shape)}, "
                f"got {images.dtype} {images.shape}"
            )
    return w, labels, images


def check_attributes(layout: Layout, shard: int, count: int, attributes) -> np.ndarray | None:
    """A shard's 0/1 attributes as int8 (None when the layout names none)."""
    names = layout.attribute_names
    if (attributes is None) != (not names):
        want = "needs attributes" if attributes is None else "has no attributes"
        raise StoreError(f"shard {shard}: this store {want}")
    if attributes is None:
        return None
    values = np.asarray(attributes)
    if values.shape != (count, len(names)) or not np.isin(values, (0, 1)).all():
        raise StoreError(f"shard {shard}: attributes must be {count} x {len(names)} values of "
                         f"0 or 1, got {values.dtype} {values.shape}")  # fmt: skip
    return values.astype(np.int8)


def index_table(layout: Layout, shard: int, start: int, count: int, labels, rows: Rows,
                attributes=None) -> pa.Table:  # fmt: skip
    """A shard's index rows: the caller's columns checked, the writer's columns filled."""
    columns = columns_of(rows, f"shard {shard} rows")
    reserved = set(columns) & set(WRITER_COLUMNS)
    if reserved:
        raise StoreError(
            f"shard {shard}: index column(s) {', '.join(sorted(reserved))} are filled by "
            "the writer (labels go in the labels argument)"
        )
    allowed = set(TEXT_COLUMNS) | set(layout.metrics)
    unknown = set(columns) - allowed
    if unknown:
        raise StoreError(
            f"shard {shard}: index column(s) {', '.join(sorted(unknown))} not declared; "
            f"this store's metrics are {', '.join(layout.metrics) or 'none'}"
        )
    for name, values in columns.items():
        if len(values) != count:
            raise StoreError(f"shard {shard}: column {name!r} has {len(values)} rows, not {count}")
    if "id" not in columns:
        raise StoreError(f"shard {shard}: index rows need an 'id' column")
    ids = texts(columns["id"], "id", count)
    if any(not i for i in ids):
        raise StoreError(f"shard {shard}: every row needs a non-empty id")
    if len(set(ids)) != count:
        raise StoreError(f"shard {shard}: ids are not unique")
    data = {
        "sample": pa.array(np.arange(start, start + count, dtype=np.int64)),
        "shard": pa.array(np.full(count, shard, dtype=np.int32)),
        "id": pa.array(ids, pa.string()),
        "label": pa.array(labels),
        "source": pa.array(texts(columns.get("source"), "source", count), pa.string()),
        "split": pa.array(texts(columns.get("split"), "split", count), pa.string()),
    }
    for metric in layout.metrics:
        if metric not in columns:
            raise StoreError(f"shard {shard}: index rows need the metric column {metric!r}")
        try:
            data[metric] = pa.array(np.asarray(columns[metric], dtype=np.float64))
        except (TypeError, ValueError):
            raise StoreError(f"shard {shard}: metric {metric!r} must be numbers") from None
    for i, name in enumerate(layout.attribute_names):
        data[name] = pa.array(attributes[:, i])
    return pa.Table.from_pydict(data, schema=layout.index_schema())


def columns_of(rows: Rows, what: str) -> dict[str, list]:
    """Rows as {column: list}; accepts a column mapping, a list of dicts or a DataFrame."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        return {str(c): list(rows[c]) for c in rows.columns}
    if isinstance(rows, Mapping):
        return {str(k): list(v) for k, v in rows.items()}
    if isinstance(rows, Iterable):
        rows = list(rows)
        names = list(dict.fromkeys(k for row in rows for k in row))
        return {k: [row.get(k) for row in rows] for k in names}
    raise StoreError(f"{what} must be a column mapping, a list of dicts or a DataFrame")


def texts(values, name: str, count: int) -> list[str | None]:
    if values is None:
        return [None] * count
    return [None if v is None else str(v) for v in values]
