"""Writing a latent store from many workers: create once, whole shards anywhere, commit once.

    writer = StoreWriter.create(url, layout=Layout(...), provenance=Provenance(k=4, ...))
    todo = writer.missing_shards()               # all of them, or what an interrupted run left
    # in any process, any order, retried freely:
    StoreWriter.open(url).write_shard(s, w=..., labels=..., rows={"id": [...], ...})
    writer.commit()                              # checks every shard, writes manifest.json last

Before the store exists, a job may already write what it learns from screening its inputs:
dead-letter parts (``write_dead_letter_part``) and records under ``screen/``; creating the store
leaves them in place.

A shard write replaces whole objects (never part of a shard: concurrent partial writes lose data,
``notes/ecosystem.md`` 2.3) and ends with a completion record holding the size and sha256 of
every object it wrote. The same inputs give the same bytes, so retries and resumed runs produce
the same checksums.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import StoreError
from schemas.layout import (
    DEAD_LETTER,
    DEAD_LETTER_SCHEMA,
    INDEX,
    MANIFEST,
    PLAN_ATTRIBUTE,
    SKIPPED,
    SKIPPED_SCHEMA,
    Layout,
    dead_letter_part_path,
    index_part_path,
    record_path,
)
from schemas.lease import LEASE
from schemas.manifest import Accounting, Manifest, ObjectEntry, Provenance, ShardEntry
from schemas.plan import make_plan, plan_parts, read_plan
from schemas.shard_checks import (
    Rows,
    check_arrays,
    check_attributes,
    columns_of,
    index_table,
    texts,
)
from schemas.urls import Location

# Written before the store is created (screening the inputs): creating it keeps them.
STAGING = ("screen/", "dead_letter/")


class StoreWriter:
    """Writes one store. Picklable: send it (or just the URL) to workers."""

    def __init__(self, location: Location, layout: Layout, provenance: Provenance) -> None:
        self.location = location
        self.layout = layout
        self.provenance = provenance
        self._arrays: dict | None = None
        self._arrays_pid = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    @classmethod
    def create(
        cls,
        url: str,
        layout: Layout,
        provenance: Provenance,
        *,
        storage_options: dict | None = None,
        overwrite: bool = False,
    ) -> StoreWriter:
        """Create the store's arrays once, on the driver, before any worker writes.

        Creating again with the same layout and provenance resumes: shards already written
        stay. A different plan, or a store that is already committed, is an error unless
        ``overwrite`` (which deletes everything under the URL first).
        """
        import zarr

        location = Location(url, storage_options)
        provenance.check(layout)
        plan = make_plan(layout, provenance)
        if overwrite:  # the job's own lease stays: it still holds the store
            location.delete_all(keep=(LEASE,))
        existing = {
            rel: size for rel, size in location.list_objects().items()
            if rel != LEASE and not rel.startswith(STAGING)
        }  # fmt: skip
        if MANIFEST in existing:
            raise StoreError(
                f"{location.display} is already a committed store; pass --overwrite to replace it"
            )
        if existing:
            if read_plan(location) != plan:
                raise StoreError(
                    f"{location.display} holds an unfinished store with a different layout or "
                    "provenance; use another URL or overwrite"
                )
            if all(path in existing for path in layout.metadata_objects()):
                return cls(location, layout, provenance)
            # Same plan but an array is missing: creation itself was interrupted, so no shard
            # can have been written yet and creating from scratch loses nothing.
        with location.errors("create"):
            group = zarr.create_group(
                location.zarr_store(read_only=False),
                attributes={PLAN_ATTRIBUTE: plan},
                overwrite=bool(existing),
            )
            for name, spec in layout.arrays.items():
                group.create_array(
                    name,
                    shape=spec.shape,
                    dtype=spec.dtype,
                    chunks=spec.chunks,
                    shards=spec.shards,
                    fill_value=0,
                )
        return cls(location, layout, provenance)

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None) -> StoreWriter:
        """Open a created, uncommitted store in a worker."""
        location = Location(url, storage_options)
        layout, provenance = plan_parts(read_plan(location))
        if location.exists(MANIFEST):
            raise StoreError(f"{location.display} is already committed; it takes no more writes")
        return cls(location, layout, provenance)

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    def completed_shards(self) -> list[int]:
        """Shards whose completion record exists and whose objects have the recorded sizes."""
        return sorted(self._complete_records())

    def missing_shards(self) -> list[int]:
        done = set(self._complete_records())
        return [s for s in range(self.num_shards) if s not in done]

    def _complete_records(self) -> dict[int, ShardEntry]:
        listing = self.location.list_objects()
        complete = {}
        for shard in range(self.num_shards):
            if record_path(shard) not in listing:
                continue
            try:
                entry = ShardEntry.from_dict(json.loads(self.location.read(record_path(shard))))
            except (FileNotFoundError, KeyError, TypeError, ValueError):
                continue  # unreadable record: the shard is simply written again
            if entry.index == shard and all(listing.get(o.path) == o.size for o in entry.objects):
                complete[shard] = entry
        return complete

    def write_shard(
        self,
        shard: int,
        *,
        w: np.ndarray,
        labels: np.ndarray | Sequence[int],
        rows: Rows,
        images: np.ndarray | None = None,
        attributes: np.ndarray | None = None,
    ) -> ShardEntry:
        """Write every sample of ``shard`` (arrays, index rows) and its completion record.

        ``rows`` holds ``id`` (required, unique), optional ``source`` and ``split``, and one
        float column per metric the layout declares (``rec_mse``, ``rec_psnr`` by default),
        as a column mapping, a list of row dicts or a pandas DataFrame. ``attributes``
        [count, A] of 0/1 when the layout names attributes (they also become index columns).
        """
        start, stop = self.layout.shard_bounds(shard)
        count = stop - start
        w, labels, images = check_arrays(self.layout, shard, count, w, labels, images)
        attributes = check_attributes(self.layout, shard, count, attributes)
        table = index_table(self.layout, shard, start, count, labels, rows, attributes)

        # A stale record must not vouch for objects being replaced: drop it first, write it last.
        # Leftover shard objects go too: zarr merges a shard write into the stored shard, so a
        # torn object from a crashed attempt would make every retry fail on its checksum.
        self.location.delete(record_path(shard))
        for path in self.layout.shard_objects(shard):
            self.location.delete(path)
        arrays = self._open_arrays()
        with self.location.errors("write shard to"):
            arrays["w"][start:stop] = w
            arrays["label"][start:stop] = labels
            if images is not None:
                arrays["image"][start:stop] = images
            if attributes is not None:
                arrays["attributes"][start:stop] = attributes
        self.location.write(index_part_path(shard), parquet_bytes(table))

        # Hash what actually landed, read back: the record then proves the stored bytes.
        objects = []
        for path in self.layout.shard_objects(shard):
            try:
                objects.append(ObjectEntry.of(path, self.location.read(path)))
            except FileNotFoundError:
                raise StoreError(
                    f"{self.location.display}: shard {shard} wrote no {path}"
                ) from None
        entry = ShardEntry(shard, start, count, tuple(objects))
        self.location.write(record_path(shard), entry.to_json())
        return entry

    def write_dead_letters(self, part: str, rows: Rows) -> int:
        """Write rejected inputs (``id``, ``source``, ``reason``) as part ``part``.

        Each worker uses its own part name (worker or bundle id); writing a part again replaces
        it, so retries do not duplicate rows. Returns the number of rows written.
        """
        return write_dead_letter_part(self.location, part, rows)

    def commit(
        self,
        *,
        code_version: str | None = None,
        listed: int | None = None,
        skipped: Rows | None = None,
    ) -> Manifest:
        """Check that every shard is complete, merge the index and dead letters, write the
        manifest last and atomically. Committing again rewrites the same manifest (new time).

        ``listed`` (how many inputs the job listed) and ``skipped`` (the rows of those it left
        out on purpose: ``id``, ``source``, ``reason``) make the manifest keep the job's
        accounting and ``skipped.parquet``; the counts must add up or nothing is committed.
        """
        records = self._complete_records()
        missing = [s for s in range(self.num_shards) if s not in records]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise StoreError(
                f"cannot commit {self.location.display}: {len(missing)} of {self.num_shards} "
                f"shards not written ({shown})"
            )
        # One row group per shard, so a reader can fetch one shard's rows alone.
        index = parquet_bytes(self._merged_index(), self.layout.shard_size)
        index_entry = ObjectEntry.of(INDEX, index)
        self.location.write(INDEX, index)
        dead, num_dead = self._merged_dead_letters()
        accounting, skipped_entry = None, None
        if listed is not None:
            table = rows_table(skipped or [], SKIPPED_SCHEMA, "skipped rows")
            accounting = Accounting(listed, self.layout.num_samples, num_dead, table.num_rows)
            skipped_bytes = parquet_bytes(table)
            skipped_entry = ObjectEntry.of(SKIPPED, skipped_bytes)
            self.location.write(SKIPPED, skipped_bytes)
        dead_entry = ObjectEntry.of(DEAD_LETTER, dead)
        self.location.write(DEAD_LETTER, dead)
        metadata = tuple(
            ObjectEntry.of(path, self.location.read(path))
            for path in self.layout.metadata_objects()
        )
        manifest = Manifest(
            layout=self.layout,
            provenance=self.provenance,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            code_version=code_version or _code_version(),
            metadata=metadata,
            shards=tuple(records[s] for s in range(self.num_shards)),
            index=index_entry,
            dead_letter=dead_entry,
            num_dead_letters=num_dead,
            accounting=accounting,
            skipped=skipped_entry,
        )
        self.location.write_atomic(MANIFEST, manifest.to_json())
        return manifest

    # -- helpers, in the order write_shard and commit use them ------------------------------

    def _open_arrays(self) -> dict:
        # Opened once per process: arrays opened before a fork hold the parent's filesystem.
        if self._arrays is None or self._arrays_pid != os.getpid():
            import zarr

            self._arrays_pid = os.getpid()

            with self.location.errors("open"):
                group = zarr.open_group(self.location.zarr_store(read_only=False), mode="r+")
                # Write every inner chunk, zeros included: a shard of all-zero labels or black
                # images must still be an object, or readers would call the shard missing.
                self._arrays = {
                    name: group[name].with_config({"write_empty_chunks": True})
                    for name in self.layout.arrays
                }
        return self._arrays

    def _merged_index(self) -> pa.Table:
        parts = []
        for shard in range(self.num_shards):
            table = pq.read_table(io.BytesIO(self.location.read(index_part_path(shard))))
            parts.append(table.cast(self.layout.index_schema()))
        index = pa.concat_tables(parts)
        ids = index.column("id").to_numpy(zero_copy_only=False)
        unique, counts = np.unique(ids, return_counts=True)
        if len(unique) != len(ids):
            dupes = ", ".join(repr(str(i)) for i in unique[counts > 1][:5])
            raise StoreError(f"cannot commit {self.location.display}: duplicate sample ids {dupes}")
        return index

    def _merged_dead_letters(self) -> tuple[bytes, int]:
        parts = sorted(
            p for p in self.location.list_objects("dead_letter") if p.endswith(".parquet")
        )
        tables = [pq.read_table(io.BytesIO(self.location.read(p))) for p in parts]
        tables = [t.cast(DEAD_LETTER_SCHEMA) for t in tables] or [DEAD_LETTER_SCHEMA.empty_table()]
        merged = pa.concat_tables(tables)
        return parquet_bytes(merged), merged.num_rows


def write_dead_letter_part(location: Location, part: str, rows: Rows) -> int:
    """Rejected inputs (``id``, ``source``, ``reason``) as dead-letter part ``part``, whether or
    not the store exists yet; rewriting a part replaces it. Returns the number of rows."""
    table = rows_table(rows, DEAD_LETTER_SCHEMA, "dead-letter rows")
    location.write(dead_letter_part_path(part), parquet_bytes(table))
    return table.num_rows


def rows_table(rows: Rows, schema: pa.Schema, what: str) -> pa.Table:
    """Text rows -> a table of ``schema``; every row needs a non-empty reason."""
    columns = columns_of(rows, what)
    unknown = set(columns) - set(schema.names)
    if unknown:
        raise StoreError(f"unknown {what.split()[0]} columns: {', '.join(sorted(unknown))}")
    count = len(next(iter(columns.values()), []))
    if any(len(values) != count for values in columns.values()):
        raise StoreError(f"{what.split()[0]} columns have different lengths")
    if count and ("reason" not in columns or any(r is None or r == "" for r in columns["reason"])):
        raise StoreError(f"every {what.split()[0]} row needs a non-empty reason")
    arrays = [pa.array(texts(columns.get(name, [None] * count), name, count), pa.string())
              for name in schema.names]  # fmt: skip
    return pa.Table.from_arrays(arrays, schema=schema)


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    # Same table, same pyarrow: same bytes. No pandas metadata, no timestamps.
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def _code_version() -> str:
    try:
        return f"advmix {importlib.metadata.version('advmix')}"
    except importlib.metadata.PackageNotFoundError:
        return "advmix (not installed)"
