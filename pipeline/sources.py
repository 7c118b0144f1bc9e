"""Inputs of the encode job: what to list on the driver and how a worker decodes one sample.

Three kinds, chosen from the ``--input`` string:
- a dataset spec (``cfmnist:train?limit=1000``): samples are rebuilt on the worker from the spec;
- a Parquet file URL (``.../images.parquet``): one row per sample, encoded image bytes + label;
- a folder URL with one subfolder per class (``s3://bucket/images/``): label = subfolder name.
Listing is cheap and deterministic (sorted), so a sample's position, and therefore its shard,
is the same on every run: that is what lets an interrupted encode resume.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field

import fsspec
import numpy as np

from advmix.datasets import load
from advmix.errors import DataError
from advmix.spec import SPLITS, parse_spec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class SampleRef:
    """One listed input: enough to decode it anywhere, small enough to ship to workers."""

    position: int  # order in the listing
    id: str
    uri: str
    label: int | None
    payload: bytes | None = field(default=None, repr=False)  # encoded image for Parquet rows


@dataclass(frozen=True)
class Listing:
    kind: str  # "spec" | "parquet" | "folder"
    source: str
    refs: list[SampleRef]
    label_names: tuple[str, ...]


class Rejected(Exception):
    """A sample that cannot be encoded; the message becomes the dead-letter reason."""


def is_dataset_spec(text: str) -> bool:
    return text.split(":", 1)[0] in SPLITS


def list_inputs(source: str, storage_options: dict | None = None, **columns) -> Listing:
    if is_dataset_spec(source):
        return _list_spec(source)
    if source.rstrip("/").endswith(".parquet"):
        return _list_parquet(source, storage_options or {}, **columns)
    return _list_folder(source, storage_options or {})


def _list_spec(text: str) -> Listing:
    spec = parse_spec(text)
    images = _load_spec(str(spec))
    refs = [
        SampleRef(i, sample_id, f"{spec}#{i}", int(label))
        for i, (sample_id, label) in enumerate(zip(images.ids, images.labels, strict=True))
    ]
    return Listing("spec", str(spec), refs, images.label_names)


@functools.lru_cache(maxsize=4)
def _load_spec(spec: str):
    return load(spec)


def _list_folder(url: str, storage_options: dict) -> Listing:
    fs, root = fsspec.url_to_fs(url, **storage_options)
    if not fs.isdir(root):
        raise DataError(f"{url}: not a folder, a .parquet file or a dataset spec")
    files = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DataError(f"{url}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    root = root.rstrip("/")
    classes = sorted({rel.split("/")[0] for rel in _relative(files, root) if "/" in rel})
    if not classes:
        raise DataError(f"{url}: images must sit in one subfolder per class")
    label_of = {name: i for i, name in enumerate(classes)}
    refs = []
    for position, (path, rel) in enumerate(zip(files, _relative(files, root), strict=True)):
        label = label_of.get(rel.split("/")[0]) if "/" in rel else None
        refs.append(SampleRef(position, rel, fs.unstrip_protocol(path), label))
    return Listing("folder", url, refs, tuple(classes))


def _relative(paths: list[str], root: str) -> list[str]:
    return [p[len(root) :].lstrip("/") for p in paths]


def _list_parquet(
    url: str,
    storage_options: dict,
    image_column: str = "image",
    label_column: str = "label",
    id_column: str | None = "id",
) -> Listing:
    import pyarrow.parquet as pq

    try:
        with fsspec.open(url, "rb", **storage_options) as f:
            table = pq.read_table(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: cannot read Parquet ({str(exc).splitlines()[0]})") from None
    for column in (image_column, label_column):
        if column not in table.column_names:
            raise DataError(
                f"{url}: no column {column!r} (columns: {', '.join(table.column_names)})"
            )
    images = table.column(image_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    has_ids = id_column and id_column in table.column_names
    ids = (
        table.column(id_column).to_pylist()
        if has_ids
        else [f"row-{i:08d}" for i in range(len(labels))]
    )
    label_names = tuple(
        str(i) for i in range(max((x for x in labels if x is not None), default=-1) + 1)
    )
    refs = [
        SampleRef(
            i, str(ids[i]), f"{url}#{i}", None if labels[i] is None else int(labels[i]), images[i]
        )
        for i in range(len(labels))
    ]
    return Listing("parquet", url, refs, label_names)


def decode(
    ref: SampleRef,
    kind: str,
    source: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    storage_options: dict | None = None,
) -> np.ndarray:
    """The image of ``ref`` as uint8 [C, H, W]; raises Rejected with the reason when unusable."""
    if ref.label is None:
        raise Rejected("missing label")
    if not 0 <= ref.label < num_classes:
        raise Rejected(f"label {ref.label} outside 0..{num_classes - 1}")
    if kind == "spec":
        image = _load_spec(source).images[ref.position]
    else:
        raw = ref.payload if kind == "parquet" else _read(ref.uri, storage_options or {})
        image = _decode_bytes(raw)
    if image.shape != tuple(image_shape):
        raise Rejected(f"image shape {tuple(image.shape)} != generator's {tuple(image_shape)}")
    return image


def _read(uri: str, storage_options: dict) -> bytes:
    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            return f.read()
    except OSError as exc:
        raise Rejected(f"unreadable: {exc}") from None


def _decode_bytes(raw: bytes | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise Rejected("empty image bytes")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise Rejected(f"undecodable image: {str(exc).splitlines()[0][:120]}") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))
