"""Inputs of the encode job: what to list on the driver and how a worker decodes one sample.

Three kinds, chosen from the ``--input`` string:
- a dataset spec (``cfmnist:train?limit=1000``): samples are rebuilt on the worker from the spec;
- a Parquet file URL (``.../images.parquet``): one row per sample, encoded image bytes + label;
- a folder URL with one subfolder per class (``s3://bucket/images/``): label = subfolder name.
  Every file below it is an input, whatever its name: it is encoded, or dead-lettered with
  its reason (not an image, not in a class folder, wrong size); hidden files and everything
  in hidden folders (``.ipynb_checkpoints/``, ``.DS_Store``) are skipped and counted, so the
  job's summary adds up to the files listed.
Listing is cheap and deterministic (sorted), so a sample's position, and therefore its shard,
is the same on every run: that is what lets an interrupted encode resume.

Images are decoded by Pillow (any format it reads), turned upright by their EXIF orientation,
and converted to 8-bit RGB with their range scaled: 16-bit images by 255/65535, float images
from [0, 1].
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass, field

import fsspec
import numpy as np

from advmix.datasets import load
from advmix.errors import DataError
from advmix.spec import SPLITS, parse_spec
from pipeline.attributes import AttributeTable, read_celeba, read_table
from schemas.urls import credentials_in_url, one_line, redact, remember_secrets


@dataclass(frozen=True)
class SampleRef:
    """One listed input: enough to decode it anywhere, small enough to ship to workers."""

    position: int  # order in the listing
    id: str
    uri: str
    label: int | None
    payload: bytes | None = field(default=None, repr=False)  # encoded image for Parquet rows
    attributes: tuple[int, ...] | None = None  # 0/1 per attribute of the listing, if it has any


@dataclass(frozen=True)
class Listing:
    kind: str  # "spec" | "parquet" | "folder"
    source: str
    refs: list[SampleRef]
    label_names: tuple[str, ...]
    skipped_rows: tuple[dict, ...] = ()  # hidden files of a folder: id, source, reason
    attribute_names: tuple[str, ...] = ()

    @property
    def skipped(self) -> int:
        return len(self.skipped_rows)

    @property
    def listed(self) -> int:
        return len(self.refs) + self.skipped


class Rejected(Exception):
    """A sample that cannot be encoded; the message becomes the dead-letter reason."""


def is_dataset_spec(text: str) -> bool:
    return text.split(":", 1)[0] in SPLITS


def list_inputs(
    source: str, storage_options: dict | None = None, attributes: str | None = None, **columns
) -> Listing:
    """The inputs of ``source``; ``attributes``: a CSV or Parquet table of named attributes
    for an image folder or a Parquet of images (``pipeline.attributes``)."""
    remember_secrets(source, storage_options)  # so no message quotes them
    for url in (source, attributes or ""):
        refused = credentials_in_url(url)
        if refused:
            raise DataError(refused)
    storage_options = storage_options or {}
    if source.split(":", 1)[0] == "celeba":
        return _list_celeba(source, storage_options)
    if is_dataset_spec(source):
        return _list_spec(source)
    table = read_table(attributes, storage_options) if attributes else None
    if source.rstrip("/").endswith(".parquet"):
        return _list_parquet(source, storage_options, table=table, **columns)
    return _list_folder(source, storage_options, table)


def _list_celeba(text: str, storage_options: dict) -> Listing:
    spec = parse_spec(text)
    if not spec.root:
        raise DataError(f"{text}: CelebA needs its folder: celeba:{spec.split}?root=DIR")
    table = read_celeba(spec.root, spec.split, storage_options)
    names = sorted(table.rows)[spec.offset :]
    names = names[: spec.limit] if spec.limit else names
    root = spec.root.rstrip("/")
    refs = [SampleRef(i, name, f"{root}/img_align_celeba/{name}", 0,
                      attributes=table.rows[name]) for i, name in enumerate(names)]  # fmt: skip
    return Listing("celeba", str(spec), refs, (), attribute_names=table.names)


def _list_spec(text: str) -> Listing:
    spec = parse_spec(text)
    images = _load_spec(str(spec))
    rows = images.attributes  # the spec's own 0/1 attributes (irmcf's env), if it has any
    refs = [
        SampleRef(i, sample_id, f"{spec}#{i}", int(label),
                  attributes=None if rows is None else tuple(int(v) for v in rows[i]))
        for i, (sample_id, label) in enumerate(zip(images.ids, images.labels, strict=True))
    ]  # fmt: skip
    return Listing("spec", str(spec), refs, images.label_names,
                   attribute_names=images.attribute_names)  # fmt: skip


@functools.lru_cache(maxsize=4)
def _load_spec(spec: str):
    return load(spec)


def _list_folder(url: str, storage_options: dict, table: AttributeTable | None) -> Listing:
    try:
        fs, root = fsspec.url_to_fs(url, **storage_options)
        if not fs.isdir(root):
            raise DataError(f"{redact(url)}: not a folder, a .parquet file or a dataset spec")
        files = sorted(fs.find(root))
    except DataError:
        raise
    except Exception as exc:  # any client failure (credentials, endpoint, bucket): one line
        raise DataError(f"cannot list {redact(url)}: {one_line(exc)}") from None
    root = root.rstrip("/")
    relative = _relative(files, root)
    visible = {rel: path for path, rel in zip(files, relative, strict=True) if not _hidden(rel)}
    if not visible and not table:
        raise DataError(f"{redact(url)}: no files found (hidden files are skipped)")
    classes = sorted({rel.split("/")[0] for rel in visible if "/" in rel})
    if not classes and table is None:
        raise DataError(f"{redact(url)}: images must sit in one subfolder per class (or pass "
                        "--attributes)")  # fmt: skip
    label_of = {name: i for i, name in enumerate(classes)}
    # With a table, its rows whose file is missing are inputs too (dead-lettered: missing).
    wanted = sorted(visible.keys() | (table.rows.keys() if table else set()))
    refs = []
    for position, rel in enumerate(wanted):
        path = visible.get(rel, f"{root}/{rel}")
        label = label_of.get(rel.split("/")[0]) if classes else 0
        attributes = table.rows.get(rel) if table else None
        refs.append(SampleRef(position, rel, fs.unstrip_protocol(path), label,
                              attributes=attributes))  # fmt: skip
    skipped = tuple(
        {"id": rel, "source": fs.unstrip_protocol(path), "reason": _hidden_reason(rel)}
        for path, rel in zip(files, relative, strict=True) if rel not in visible
    )  # fmt: skip
    return Listing("folder", url, refs, tuple(classes), skipped_rows=skipped,
                   attribute_names=table.names if table else ())  # fmt: skip


def _hidden(rel: str) -> bool:
    """A file whose name, or any folder's name on its path, starts with a dot."""
    return any(part.startswith(".") for part in rel.split("/"))


def _hidden_reason(rel: str) -> str:
    *folders, name = rel.split("/")
    hidden = [folder for folder in folders if folder.startswith(".")]
    if hidden:
        return f"skipped: inside hidden folder {hidden[0]}/"
    return f"skipped: hidden file {name}"


def _relative(paths: list[str], root: str) -> list[str]:
    return [p[len(root) :].lstrip("/") for p in paths]


def _list_parquet(
    url: str,
    storage_options: dict,
    image_column: str = "image",
    label_column: str = "label",
    id_column: str | None = "id",
    table: AttributeTable | None = None,
) -> Listing:
    import pyarrow.parquet as pq

    attributes = table
    try:
        with fsspec.open(url, "rb", **storage_options) as f:
            parquet = pq.read_table(f)
    except Exception as exc:  # any client failure (credentials, endpoint, missing object)
        raise DataError(f"cannot read Parquet {redact(url)}: {one_line(exc)}") from None
    columns = parquet.column_names
    required = (image_column,) if attributes is not None else (image_column, label_column)
    for column in required:
        if column not in columns:
            raise DataError(f"{url}: no column {column!r} (columns: {', '.join(columns)})")
    images = parquet.column(image_column).to_pylist()
    labels = (parquet.column(label_column).to_pylist() if label_column in columns
              else [0] * len(images))  # fmt: skip
    has_ids = id_column and id_column in columns
    ids = (parquet.column(id_column).to_pylist() if has_ids
           else [f"row-{i:08d}" for i in range(len(labels))])  # fmt: skip
    label_names = tuple(
        str(i) for i in range(max((x for x in labels if x is not None), default=-1) + 1)
    ) if label_column in columns else ()  # fmt: skip
    refs = [
        SampleRef(
            i, str(ids[i]), f"{url}#{i}", None if labels[i] is None else int(labels[i]), images[i],
            attributes=attributes.rows.get(str(ids[i])) if attributes else None,
        )
        for i in range(len(labels))
    ]  # fmt: skip
    return Listing("parquet", url, refs, label_names,
                   attribute_names=attributes.names if attributes else ())  # fmt: skip


def decode(
    ref: SampleRef,
    kind: str,
    source: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    storage_options: dict | None = None,
    resize: str = "center-crop",
    attribute_count: int = 0,
) -> np.ndarray:
    """The image of ``ref`` as uint8 [C, H, W] at the generator's size (``resize``:
    "center-crop" crops the largest centred square and resizes it; "none" rejects other
    sizes); raises Rejected with the reason when unusable."""
    if ref.label is None:
        raise Rejected("missing label")
    if num_classes and not 0 <= ref.label < num_classes:
        raise Rejected(f"label {ref.label} outside 0..{num_classes - 1}")
    if attribute_count and ref.attributes is None:
        raise Rejected("no row in the attribute table")
    if kind == "spec":
        image = _load_spec(source).images[ref.position]
    else:
        raw = ref.payload if kind == "parquet" else _read(ref.uri, storage_options or {})
        image = _decode_bytes(raw)
    if image.shape != tuple(image_shape) and resize == "center-crop" and image.shape[0] == 3:
        image = fit_square(image, image_shape[-1])
    if image.shape != tuple(image_shape):
        raise Rejected(f"image shape {tuple(image.shape)} != generator's {tuple(image_shape)}")
    return image


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """[3, H, W] uint8 -> [3, size, size]: the largest centred square, resized (Lanczos)."""
    from PIL import Image

    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(image[:, top : top + side, left : left + side].transpose(1, 2, 0))
    resized = Image.fromarray(square).resize((size, size), Image.LANCZOS)
    return np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1))


def _read(uri: str, storage_options: dict) -> bytes:
    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            return f.read()
    except FileNotFoundError:
        raise Rejected("missing image: file not found") from None
    except OSError as exc:
        raise Rejected(f"unreadable: {type(exc).__name__}: {_stable(str(exc))}") from None


def _stable(message: str) -> str:
    """An exception message fit for a dead-letter table: one line, no credentials, and no
    memory addresses (``<_io.BytesIO object at 0x7f...>``), so that two runs of the same job
    write the same table."""
    first = (message.strip().splitlines() or [""])[0]
    return redact(re.sub(r"<([\w.]+) object at 0x[0-9a-fA-F]+>", r"<\1>", first))[:160]


def _decode_bytes(raw: bytes | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not raw:
        raise Rejected("empty file")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            upright = ImageOps.exif_transpose(img)  # a camera's rotation, applied
            rgb = _to_rgb8(upright)
    except UnidentifiedImageError:
        raise Rejected("not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise Rejected(f"undecodable image: {_stable(str(exc))}") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _to_rgb8(img) -> np.ndarray:
    """[H, W, 3] uint8 of a Pillow image of any mode, its value range scaled to 0..255."""
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit (Pillow widens some to "I")
        values = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
    elif img.mode == "F":  # float: [0, 1]
        values = np.asarray(img, dtype=np.float64) * 255.0
    else:
        return np.asarray(img.convert("RGB"))
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)
