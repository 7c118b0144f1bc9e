"""Names, shapes and the index schema of the latent store (``docs/store-format.md``).

Version 2 is version 1 plus optional named binary attributes per sample (CelebA's 40, say):
an ``attributes`` array [N, A] int8 and one index column per attribute. A store without
attributes is written as version 1, byte for byte what it always was; readers take both.

Everything a writer and a reader must agree on lives here: object paths relative to the store
root, the array layout derived from a handful of numbers, and the Parquet schemas.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from schemas.errors import StoreError

SCHEMA_VERSION = 2  # the newest this code writes; it reads every version in SCHEMA_VERSIONS
SCHEMA_VERSIONS = (1, 2)
FORMAT = "advmix-latent-store"

MANIFEST = "manifest.json"
INDEX = "index.parquet"
DEAD_LETTER = "dead_letter.parquet"
SKIPPED = "skipped.parquet"  # listed inputs the job left out on purpose (hidden files)
GROUP_METADATA = "zarr.json"
# The plan (layout and provenance) the driver fixed at creation, in the root group's attributes.
PLAN_ATTRIBUTE = "advmix_store"

W_DTYPES = ("float16", "float32")
DEFAULT_METRICS = ("rec_mse", "rec_psnr")
# Index columns the writer fills itself; callers supply ``id`` and optionally source/split.
WRITER_COLUMNS = ("sample", "shard", "label")
TEXT_COLUMNS = ("id", "source", "split")
RESERVED_COLUMNS = WRITER_COLUMNS + TEXT_COLUMNS

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ATTRIBUTE = re.compile(r"^[A-Za-z0-9_]+$")  # CelebA's include 5_o_Clock_Shadow
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


def index_part_path(shard: int) -> str:
    return f"index/shard-{shard:05d}.parquet"


def record_path(shard: int) -> str:
    return f"shards/shard-{shard:05d}.json"


def dead_letter_part_path(part: str) -> str:
    if not _PART.match(part):
        raise StoreError(
            f"dead-letter part name {part!r} must be 1-128 letters, digits, '.', '_' or '-'"
        )
    return f"dead_letter/{part}.parquet"


def screen_record_path(chunk: int) -> str:
    """Where the screening of listing chunk ``chunk`` records which inputs it accepted."""
    return f"screen/chunk-{chunk:05d}.json"


def check_relpath(path: object) -> str:
    """Return ``path`` if it names an object inside the store root, else raise StoreError."""
    text = str(path)
    segments = text.split("/")
    if (
        not isinstance(path, str)
        or not text
        or any(seg in ("", ".", "..") or not _SEGMENT.match(seg) for seg in segments)
    ):
        raise StoreError(f"manifest path {text!r} escapes the store root or is not a plain path")
    return text


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None

    def key(self, name: str, shard: int) -> str:
        """Object key of ``shard`` (zarr v3 default chunk keys: ``c/<i>/<j>/...``)."""
        coords = (shard,) + (0,) * (len(self.shape) - 1)
        return f"{name}/c/" + "/".join(str(c) for c in coords)


@dataclass(frozen=True)
class Layout:
    """What the driver fixes before any worker writes: sizes, dtypes and index columns."""

    num_samples: int
    shard_size: int
    num_ws: int
    w_dim: int
    w_dtype: str = "float16"
    image_shape: tuple[int, int, int] | None = None
    label_names: tuple[str, ...] = ()
    metrics: tuple[str, ...] = DEFAULT_METRICS
    attribute_names: tuple[str, ...] = ()  # binary attributes per sample (version 2)
    arrays: dict[str, ArraySpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("num_samples", "shard_size", "num_ws", "w_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise StoreError(f"{name} must be a positive integer, got {value!r}")
        if self.w_dtype not in W_DTYPES:
            raise StoreError(f"w_dtype must be one of {', '.join(W_DTYPES)}, got {self.w_dtype!r}")
        if self.image_shape is not None:
            shape = tuple(self.image_shape)
            if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
                raise StoreError(f"image_shape must be (C, H, W), got {self.image_shape!r}")
            object.__setattr__(self, "image_shape", shape)
        names = tuple(self.label_names)
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise StoreError("label_names must be distinct non-empty strings")
        object.__setattr__(self, "label_names", names)
        metrics = tuple(self.metrics)
        for metric in metrics:
            if not isinstance(metric, str) or not _NAME.match(metric):
                raise StoreError(f"metric name {metric!r} is not an identifier")
            if metric in RESERVED_COLUMNS:
                raise StoreError(f"metric name {metric!r} is a reserved index column")
        if len(set(metrics)) != len(metrics):
            raise StoreError("metric names must be distinct")
        object.__setattr__(self, "metrics", metrics)
        attributes = tuple(self.attribute_names)
        for name in attributes:
            if not isinstance(name, str) or not _ATTRIBUTE.match(name):
                raise StoreError(f"attribute name {name!r}: letters, digits and '_' only")
            if name in RESERVED_COLUMNS or name in metrics:
                raise StoreError(f"attribute name {name!r} is a reserved index column or a metric")
        if len(set(attributes)) != len(attributes):
            raise StoreError("attribute names must be distinct")
        object.__setattr__(self, "attribute_names", attributes)
        object.__setattr__(self, "arrays", self._array_specs())

    @property
    def schema_version(self) -> int:
        return 2 if self.attribute_names else 1

    def _array_specs(self) -> dict[str, ArraySpec]:
        n, s, ws = self.num_samples, self.shard_size, (self.num_ws, self.w_dim)
        arrays = {
            "w": ArraySpec((n, *ws), self.w_dtype, (1, *ws), (s, *ws)),
            # Labels are 8 bytes a sample: one plain chunk per shard reads as cheaply as any.
            "label": ArraySpec((n,), "int64", (s,), None),
        }
        if self.image_shape is not None:
            chw = self.image_shape
            arrays["image"] = ArraySpec((n, *chw), "uint8", (1, *chw), (s, *chw))
        if self.attribute_names:  # 0/1 per attribute, one plain chunk per shard as labels
            a = len(self.attribute_names)
            arrays["attributes"] = ArraySpec((n, a), "int8", (s, a), None)
        return arrays

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """First and one-past-last sample of ``shard``; the last shard may be short."""
        if not isinstance(shard, int) or not 0 <= shard < self.num_shards:
            raise StoreError(f"shard {shard!r} out of range: the store has {self.num_shards}")
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_samples)

    def shard_objects(self, shard: int) -> list[str]:
        """Every object a complete ``shard`` consists of, arrays first, then its index part."""
        keys = [spec.key(name, shard) for name, spec in self.arrays.items()]
        return keys + [index_part_path(shard)]

    def metadata_objects(self) -> list[str]:
        return [GROUP_METADATA] + [f"{name}/zarr.json" for name in self.arrays]

    def index_schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("sample", pa.int64()),
                ("shard", pa.int32()),
                ("id", pa.string()),
                ("label", pa.int64()),
                ("source", pa.string()),
                ("split", pa.string()),
            ]
            + [(metric, pa.float64()) for metric in self.metrics]
            + [(name, pa.int8()) for name in self.attribute_names]
        )

    def to_dict(self) -> dict:
        plan = asdict(self)
        plan.pop("arrays")
        plan["image_shape"] = list(self.image_shape) if self.image_shape else None
        plan["label_names"] = list(self.label_names)
        plan["metrics"] = list(self.metrics)
        plan["attribute_names"] = list(self.attribute_names)
        if not self.attribute_names:  # a version 1 plan, as it always was
            del plan["attribute_names"]
        return plan

    @classmethod
    def from_dict(cls, plan: dict) -> Layout:
        try:
            image_shape = plan.get("image_shape")
            return cls(
                num_samples=plan["num_samples"],
                shard_size=plan["shard_size"],
                num_ws=plan["num_ws"],
                w_dim=plan["w_dim"],
                w_dtype=plan["w_dtype"],
                image_shape=tuple(image_shape) if image_shape else None,
                label_names=tuple(plan.get("label_names", ())),
                metrics=tuple(plan.get("metrics", ())),
                attribute_names=tuple(plan.get("attribute_names", ())),
            )
        except (KeyError, TypeError) as exc:
            raise StoreError(f"store layout is malformed ({type(exc).__name__}: {exc})") from None


DEAD_LETTER_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("reason", pa.string())]
)
# Same columns as the dead letters: what was left out, where it was, and why.
SKIPPED_SCHEMA = DEAD_LETTER_SCHEMA
