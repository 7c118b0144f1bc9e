"""``manifest.json``: what a committed store holds and the checksums that prove it.

The manifest is the last object a commit writes; a store without one is not a store. Parsing it
checks the schema version first (so a future format fails with that message and no other), then
the shape of every entry, and refuses any path that could leave the store root.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import StoreError
from schemas.layout import FORMAT, SCHEMA_VERSIONS, Layout, check_relpath


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ObjectEntry:
    """One stored object: path relative to the store root, size and sha256 of its bytes."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def of(cls, path: str, data: bytes) -> ObjectEntry:
        return cls(path, len(data), sha256_hex(data))

    @classmethod
    def from_dict(cls, entry: dict) -> ObjectEntry:
        size, digest = entry["size"], entry["sha256"]
        if not isinstance(size, int) or size < 0 or not isinstance(digest, str):
            raise TypeError(f"bad size or sha256 for {entry.get('path')!r}")
        return cls(check_relpath(entry["path"]), size, digest)


@dataclass(frozen=True)
class ShardEntry:
    """A complete shard: its samples and the objects that hold them (arrays + index part)."""

    index: int
    start: int
    count: int
    objects: tuple[ObjectEntry, ...]
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", shard_digest(self.objects))

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "start": self.start,
            "count": self.count,
            "sha256": self.sha256,
            "objects": [o.to_dict() for o in self.objects],
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, entry: dict) -> ShardEntry:
        objects = tuple(ObjectEntry.from_dict(o) for o in entry["objects"])
        return cls(int(entry["index"]), int(entry["start"]), int(entry["count"]), objects,
                   str(entry["sha256"]))  # fmt: skip


def shard_digest(objects: tuple[ObjectEntry, ...] | list[ObjectEntry]) -> str:
    """sha256 over ``path<TAB>size<TAB>sha256<LF>`` of the shard's objects sorted by path."""
    lines = "".join(f"{o.path}\t{o.size}\t{o.sha256}\n" for o in sorted(objects, key=_path))
    return sha256_hex(lines.encode())


def _path(entry: ObjectEntry) -> str:
    return entry.path


@dataclass(frozen=True)
class Provenance:
    """How the latents were made; fixed by the driver when it creates the store."""

    k: int
    generator_fingerprint: str = ""
    generator_config: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)
    dataset: str = ""

    def check(self, layout: Layout) -> Provenance:
        if not isinstance(self.k, int) or isinstance(self.k, bool):
            raise StoreError(f"k must be an integer, got {self.k!r}")
        if not 0 <= self.k <= layout.num_ws:
            raise StoreError(f"k must be in [0, num_ws={layout.num_ws}], got {self.k}")
        for name in ("generator_config", "encoder"):
            try:
                json.dumps(getattr(self, name), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{name} is not plain JSON ({exc})") from None
        return self

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "generator": {
                "fingerprint": self.generator_fingerprint,
                "config": self.generator_config,
            },
            "encoder": self.encoder,
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Provenance:
        generator = data.get("generator") or {}
        return cls(
            k=data["k"],
            generator_fingerprint=str(generator.get("fingerprint") or ""),
            generator_config=dict(generator.get("config") or {}),
            encoder=dict(data.get("encoder") or {}),
            dataset=str(data.get("dataset") or ""),
        )


@dataclass(frozen=True)
class Accounting:
    """Where every listed input went: encoded, rejected (dead letters) or skipped (hidden
    files, kept in ``skipped.parquet``). The four add up; a store written before the job kept
    this account has none."""

    listed: int
    encoded: int
    rejected: int
    skipped: int

    def __post_init__(self) -> None:
        values = (self.listed, self.encoded, self.rejected, self.skipped)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise StoreError(f"accounting counts must be whole numbers >= 0, got {values}")
        if self.encoded + self.rejected + self.skipped != self.listed:
            raise StoreError(
                f"accounting does not add up: listed {self.listed} != encoded {self.encoded} + "
                f"rejected {self.rejected} + skipped {self.skipped}"
            )

    def to_dict(self) -> dict:
        return {"listed": self.listed, "encoded": self.encoded, "rejected": self.rejected,
                "skipped": self.skipped}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Accounting:
        return cls(*(data[key] for key in ("listed", "encoded", "rejected", "skipped")))


@dataclass(frozen=True)
class Manifest:
    layout: Layout
    provenance: Provenance
    created: str
    code_version: str
    metadata: tuple[ObjectEntry, ...]
    shards: tuple[ShardEntry, ...]
    index: ObjectEntry
    dead_letter: ObjectEntry
    num_dead_letters: int
    accounting: Accounting | None = None
    skipped: ObjectEntry | None = None  # skipped.parquet, where the job kept an account

    @property
    def schema_version(self) -> int:
        return self.layout.schema_version

    def objects(self) -> list[tuple[int | None, ObjectEntry]]:
        """Every object the manifest vouches for, with its shard number (None for the rest)."""
        listed: list[tuple[int | None, ObjectEntry]] = [(None, o) for o in self.metadata]
        listed += [(s.index, o) for s in self.shards for o in s.objects]
        listed += [(None, self.index), (None, self.dead_letter)]
        return listed + ([(None, self.skipped)] if self.skipped else [])

    def to_dict(self) -> dict:
        layout = self.layout
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "created": self.created,
            "code_version": self.code_version,
            **layout.to_dict(),
            "num_shards": layout.num_shards,
            "num_dead_letters": self.num_dead_letters,
            "arrays": {
                name: {
                    "path": name,
                    "shape": list(spec.shape),
                    "dtype": spec.dtype,
                    "chunks": list(spec.chunks),
                    "shards": list(spec.shards) if spec.shards else None,
                }
                for name, spec in layout.arrays.items()
            },
            **self.provenance.to_dict(),
            "metadata": [o.to_dict() for o in self.metadata],
            "index": self.index.to_dict(),
            "dead_letter": self.dead_letter.to_dict(),
            "shards": [s.to_dict() for s in self.shards],
            **({"accounting": self.accounting.to_dict()} if self.accounting else {}),
            **({"skipped": self.skipped.to_dict()} if self.skipped else {}),
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1) + "\n").encode()


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse and check ``manifest.json`` bytes; ``where`` names the store in messages."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{where}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise StoreError(f"{where}: manifest.json is not an advmix latent-store manifest")
    version = raw.get("schema_version")
    if version not in SCHEMA_VERSIONS:
        known = ", ".join(map(str, SCHEMA_VERSIONS))
        raise StoreError(f"{where}: unknown store schema version {version!r} (this reader knows "
                         f"{known})")  # fmt: skip
    try:
        manifest = _from_dict(raw)
    except StoreError as exc:
        raise StoreError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise StoreError(f"{where}: manifest.json is malformed ({what})") from None
    return manifest


def _from_dict(raw: dict[str, Any]) -> Manifest:
    # Paths first: a manifest that points outside the root is refused whatever else it says.
    for name, array in raw["arrays"].items():
        if check_relpath(array["path"]) != name:
            raise StoreError(f"manifest array {name!r} has path {array['path']!r}")
    metadata = tuple(ObjectEntry.from_dict(o) for o in raw["metadata"])
    shards = tuple(ShardEntry.from_dict(s) for s in raw["shards"])
    index = ObjectEntry.from_dict(raw["index"])
    dead_letter = ObjectEntry.from_dict(raw["dead_letter"])
    skipped = ObjectEntry.from_dict(raw["skipped"]) if "skipped" in raw else None
    accounting = Accounting.from_dict(raw["accounting"]) if "accounting" in raw else None
    layout = Layout.from_dict(raw)
    if raw.get("schema_version") != layout.schema_version:
        raise StoreError(f"manifest.json says schema version {raw.get('schema_version')!r}, but "
                         f"its contents are version {layout.schema_version}")  # fmt: skip
    if [s.index for s in shards] != list(range(layout.num_shards)):
        raise StoreError(f"manifest lists shards {[s.index for s in shards][:8]}..., "
                         f"expected 0..{layout.num_shards - 1}")  # fmt: skip
    for entry in shards:
        start, stop = layout.shard_bounds(entry.index)
        if (entry.start, entry.count) != (start, stop - start):
            raise StoreError(f"manifest shard {entry.index} covers the wrong samples")
        if {o.path for o in entry.objects} != set(layout.shard_objects(entry.index)):
            raise StoreError(f"manifest shard {entry.index} lists the wrong objects")
    return Manifest(
        layout=layout,
        provenance=Provenance.from_dict(raw),
        created=str(raw["created"]),
        code_version=str(raw["code_version"]),
        metadata=metadata,
        shards=shards,
        index=index,
        dead_letter=dead_letter,
        num_dead_letters=int(raw["num_dead_letters"]),
        accounting=accounting,
        skipped=skipped,
    )
