"""Reading a committed latent store: open + validate, then whole shards or single samples.

    store = open_store("s3://bucket/cfmnist.zarr", storage_options, expect_generator=fp)
    for shard in store.iter_shards():             # one GET per array per shard
        shard.w, shard.labels, shard.images, shard.rows

Whole shards are the efficient unit (one request per array), so loaders should read shards
and shuffle in memory. Every object a reader decodes (array metadata, shard objects, the
index, the dead letters) is checked against the sha256 the manifest records before it is
used: a damaged store is refused with one line naming the shard, never silently read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from schemas.errors import StoreError
from schemas.layout import DEAD_LETTER, GROUP_METADATA, INDEX, MANIFEST, Layout, record_path
from schemas.manifest import Manifest, ObjectEntry, parse_manifest, sha256_hex
from schemas.plan import plan_parts, read_plan
from schemas.shard_decode import ShardFormat, decode_shard
from schemas.urls import Location, client_errors
from schemas.validate import check_store


@dataclass(frozen=True)
class Shard:
    """The samples ``start .. start+len-1`` of one shard; ``rows`` is their slice of the index."""

    index: int
    start: int
    w: np.ndarray
    labels: np.ndarray
    images: np.ndarray | None
    rows: pd.DataFrame
    attributes: np.ndarray | None = None  # [n, A] 0/1, version 2 stores with attributes

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Sample:
    index: int
    w: np.ndarray
    label: int
    image: np.ndarray | None
    row: dict


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _hashing_pool() -> ThreadPoolExecutor:
    """Threads that hash shard objects while they decode (one pool per process: threads do
    not survive a DataLoader worker's fork)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                                 thread_name_prefix="store-sha256"))  # fmt: skip
    return _POOL[1]


def open_store(
    url: str,
    storage_options: dict | None = None,
    *,
    expect_generator: str | None = None,
    full_check: bool = False,
) -> Store:
    """Open a committed store and validate it (fast by default, every checksum if full_check).

    ``expect_generator`` is the fingerprint of the generator the caller will decode with; a
    store encoded by another generator is refused, since its latents mean nothing there.
    """
    location = Location(url, storage_options)
    try:
        data = location.read(MANIFEST)
    except FileNotFoundError:
        raise StoreError(_no_manifest(location)) from None
    manifest = parse_manifest(data, location.display)
    found = manifest.provenance.generator_fingerprint
    if expect_generator is not None and expect_generator != found:
        raise StoreError(
            f"{location.display}: generator mismatch: store was encoded with "
            f"{found or 'no recorded generator'}, expected {expect_generator}"
        )
    store = Store(location, manifest)
    store.validate(full=full_check)
    return store


def _no_manifest(location: Location) -> str:
    listing = location.list_objects()
    if GROUP_METADATA not in listing:
        return f"no latent store at {location.display} (no manifest.json)"
    layout = _layout_of_unfinished(location)
    written = ""
    if layout is not None:
        done = sum(record_path(s) in listing for s in range(layout.num_shards))
        written = f"; {done} of {layout.num_shards} shards written"
    return (
        f"{location.display} is not committed (no manifest.json{written}): its encode did not "
        "finish; run it again to resume"
    )


def _layout_of_unfinished(location: Location) -> Layout | None:
    try:
        return plan_parts(read_plan(location))[0]
    except StoreError:
        return None


class Store:
    """A committed, validated store. Picklable: arrays reopen lazily in each process."""

    def __init__(self, location: Location, manifest: Manifest) -> None:
        self.location = location
        self.manifest = manifest
        self.layout = manifest.layout
        self.size_bytes: int | None = None

    def __getstate__(self) -> dict:
        keep = ("location", "manifest", "layout", "size_bytes")
        return {k: v for k, v in self.__dict__.items() if k in keep}

    def __repr__(self) -> str:
        return f"Store({self.url!r}, {self.num_samples} samples in {self.num_shards} shards)"

    # -- manifest fields --------------------------------------------------------------------

    url = property(lambda self: self.location.display)
    num_samples = property(lambda self: self.layout.num_samples)
    shard_size = property(lambda self: self.layout.shard_size)
    num_shards = property(lambda self: self.layout.num_shards)
    num_ws = property(lambda self: self.layout.num_ws)
    w_dim = property(lambda self: self.layout.w_dim)
    w_dtype = property(lambda self: self.layout.w_dtype)
    image_shape = property(lambda self: self.layout.image_shape)
    has_images = property(lambda self: self.layout.image_shape is not None)
    label_names = property(lambda self: self.layout.label_names)
    metrics = property(lambda self: self.layout.metrics)
    attribute_names = property(lambda self: self.layout.attribute_names)
    k = property(lambda self: self.manifest.provenance.k)
    generator_fingerprint = property(lambda self: self.manifest.provenance.generator_fingerprint)
    generator_config = property(lambda self: self.manifest.provenance.generator_config)
    encoder = property(lambda self: self.manifest.provenance.encoder)
    dataset = property(lambda self: self.manifest.provenance.dataset)
    created = property(lambda self: self.manifest.created)
    code_version = property(lambda self: self.manifest.code_version)
    num_dead_letters = property(lambda self: self.manifest.num_dead_letters)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        return self.layout.shard_bounds(shard)

    # -- validation ---------------------------------------------------------------------------

    def validate(self, full: bool = False) -> None:
        """Re-check the objects against the manifest (full: every sha256) and the arrays'
        metadata against the layout. Raises StoreError on the first problem."""
        self.size_bytes = check_store(self.location, self.manifest, full=full)
        for name, spec in self.layout.arrays.items():
            array = self._arrays[name]
            if tuple(array.shape) != spec.shape or str(array.dtype) != spec.dtype:
                raise StoreError(
                    f"{self.url}: array {name!r} is {array.dtype} {tuple(array.shape)}, "
                    f"manifest says {spec.dtype} {spec.shape}"
                )

    # -- reading ------------------------------------------------------------------------------

    def read_shard(self, shard: int) -> Shard:
        arrays = self.read_arrays(shard)
        start, stop = self.shard_bounds(shard)
        rows = self.index().iloc[start:stop]
        return Shard(shard, start, arrays["w"], arrays["label"], arrays.get("image"), rows,
                     arrays.get("attributes"))  # fmt: skip

    def read_arrays(self, shard: int, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One whole-shard read of the arrays ``names`` (default: w, label and image if stored),
        without the index: what a training stream needs."""
        names = tuple(self.layout.arrays if names is None else names)
        unknown = sorted(set(names) - set(self.layout.arrays))
        if unknown:
            raise StoreError(f"{self.url}: no arrays {unknown}; it has {list(self.layout.arrays)}")
        start, stop = self.shard_bounds(shard)
        with self._decoding(f"shard {shard}"):
            return {name: self._read_whole(name, shard, start, stop) for name in names}

    def _read_whole(self, name: str, shard: int, start: int, stop: int) -> np.ndarray:
        rel = self.layout.arrays[name].key(name, shard)
        fmt = self._formats[name]
        if fmt is None:  # codecs or chunking that shard_decode does not know: zarr reads it
            self.read_verified(rel)
            return np.asarray(self._arrays[name][start:stop])
        blob = self.location.read(rel)
        # sha256 and zstd both release the GIL: hash beside the decode, return after both.
        verdict = _hashing_pool().submit(self._verify, rel, blob)
        try:
            values = decode_shard(blob, fmt, stop - start)
        except Exception:
            verdict.result()  # damaged bytes are reported as damaged, not as a decode error
            raise
        verdict.result()
        return values

    def read_verified(self, rel: str) -> bytes:
        """The bytes of the object ``rel``, refused unless they are the ones the manifest
        vouches for (size and sha256)."""
        data = self.location.read(rel)
        self._verify(rel, data)
        return data

    def _verify(self, rel: str, data: bytes) -> None:
        shard, entry = self._entries[rel]
        if len(data) != entry.size or sha256_hex(data) != entry.sha256:
            what = f"shard {shard}" if shard is not None else rel
            raise StoreError(
                f"{self.url}: {what} is damaged: {rel} does not match its sha256 in the "
                "manifest (changed after commit); run `advmix store validate --full`"
            )

    @cached_property
    def _entries(self) -> dict[str, tuple[int | None, ObjectEntry]]:
        return {entry.path: (shard, entry) for shard, entry in self.manifest.objects()}

    def iter_shards(self, shards: Iterable[int] | None = None) -> Iterator[Shard]:
        for shard in range(self.num_shards) if shards is None else shards:
            yield self.read_shard(shard)

    def read_sample(self, sample: int) -> Sample:
        if not isinstance(sample, int | np.integer) or not 0 <= sample < self.num_samples:
            raise StoreError(f"sample {sample!r} out of range: the store has {self.num_samples}")
        sample = int(sample)
        shard = sample // self.shard_size
        with self._decoding(f"sample {sample}"):
            for name, spec in self.layout.arrays.items():  # zarr decodes from these objects
                self.read_verified(spec.key(name, shard))
            w = self._arrays["w"][sample]
            label = int(self._arrays["label"][sample])
            image = self._arrays["image"][sample] if self.has_images else None
        return Sample(sample, w, label, image, self.index().iloc[sample].to_dict())

    def index(self) -> pd.DataFrame:
        """The whole index, one row per sample in sample order (cached)."""
        return self._index

    def dead_letters(self) -> pd.DataFrame:
        with self._decoding("the dead-letter table"):
            return pq.read_table(io.BytesIO(self.read_verified(DEAD_LETTER))).to_pandas()

    @cached_property
    def _index(self) -> pd.DataFrame:
        with self._decoding("the index"):
            table = pq.read_table(io.BytesIO(self.read_verified(INDEX)))
        frame = table.to_pandas()
        if len(frame) != self.num_samples or not np.array_equal(
            frame["sample"].to_numpy(), np.arange(self.num_samples)
        ):
            raise StoreError(f"{self.url}: index.parquet does not list samples 0..N-1 in order")
        return frame

    @property
    def _arrays(self) -> dict:
        # Opened once per process: arrays opened before a fork hold the parent's filesystem.
        cached = self.__dict__.get("_opened")
        if cached is None or cached[0] != os.getpid():
            cached = (os.getpid(), self._open_arrays())
            self.__dict__["_opened"] = cached
        return cached[1]

    @cached_property
    def _formats(self) -> dict:
        """Arrays whose shard objects ``shard_decode`` reads directly (one object per shard)."""
        formats = {name: ShardFormat.of(array) for name, array in self._arrays.items()}
        return {n: f if f and f.chunks == self.shard_size else None for n, f in formats.items()}

    def _open_arrays(self) -> dict:
        import zarr

        with self.location.errors("open"), self._decoding("metadata"):
            for entry in self.manifest.metadata:  # what zarr will decode every array with
                self.read_verified(entry.path)
            group = zarr.open_group(self.location.zarr_store(read_only=True), mode="r")
            return {name: group[name] for name in self.layout.arrays}

    @contextmanager
    def _decoding(self, what: str):
        try:
            yield
        except StoreError:
            raise
        except (KeyError, ValueError, RuntimeError, OSError, *client_errors()) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise StoreError(
                f"{self.url}: cannot read {what} ({type(exc).__name__}: {first}); "
                "run `advmix store validate --full`"
            ) from None
