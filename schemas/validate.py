"""Checking a committed store against its manifest.

Fast (the default): one listing of the store; every object the manifest names must be there
with exactly the recorded size. Full: also read every object and compare its sha256, which
finds flipped bytes that keep the size.
"""

from __future__ import annotations

from schemas.errors import StoreError
from schemas.manifest import Manifest, ObjectEntry, sha256_hex, shard_digest
from schemas.urls import Location

# Objects hashed per batch in a full check: enough for concurrent GETs, bounded memory.
_BATCH = 16


def check_store(location: Location, manifest: Manifest, *, full: bool = False) -> int:
    """Raise StoreError at the first problem; return the store's total size in bytes."""
    where = location.display
    listing = location.list_objects()
    for shard, entry in manifest.objects():
        size = listing.get(entry.path)
        what = f"shard {shard}" if shard is not None else "object"
        if size is None:
            raise StoreError(f"{where}: missing {what}: {entry.path} not found")
        if size < entry.size:
            raise StoreError(
                f"{where}: truncated {what}: {entry.path} has {size} bytes, "
                f"manifest says {entry.size}"
            )
        if size > entry.size:
            raise StoreError(
                f"{where}: {what} changed after commit: {entry.path} has {size} bytes, "
                f"manifest says {entry.size}"
            )
    if full:
        _check_checksums(location, manifest)
    return sum(listing.values())


def _check_checksums(location: Location, manifest: Manifest) -> None:
    where = location.display
    for shard in manifest.shards:
        if shard_digest(shard.objects) != shard.sha256:
            raise StoreError(f"{where}: checksum mismatch: manifest entry of shard {shard.index}")
    listed = manifest.objects()
    for start in range(0, len(listed), _BATCH):
        batch = listed[start : start + _BATCH]
        contents = _read_many(location, [entry for _, entry in batch])
        for (shard, entry), data in zip(batch, contents, strict=True):
            if sha256_hex(data) != entry.sha256:
                what = f"shard {shard}" if shard is not None else entry.path
                raise StoreError(
                    f"{where}: checksum mismatch in {what}: sha256 of {entry.path} is not the "
                    "one in the manifest"
                )


def _read_many(location: Location, entries: list[ObjectEntry]) -> list[bytes]:
    paths = [location.path(entry.path) for entry in entries]
    with location.errors("read"):
        # fsspec fetches a list of paths concurrently on object stores.
        found = location.fs.cat(paths, on_error="return")
    contents = []
    for entry, path in zip(entries, paths, strict=True):
        data = found.get(path, found.get(location.fs._strip_protocol(path)))
        if not isinstance(data, bytes):
            raise StoreError(
                f"{location.display}: cannot read {entry.path} ({type(data).__name__})"
            )
        contents.append(data)
    return contents
