"""One worker's pass over its span of an epoch: whole-shard reads (prefetched in threads), the
shuffle buffer, batches, and the replay on sample indices that makes a resume exact.

``training.stream.LatentStream`` plans the epoch (shard order, rank and worker spans); a
``WorkerIterator`` turns one worker's pieces of that plan into batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from advmix.threads import torch_threads
from schemas.reader import Store
from training.shuffle import ShuffleBuffer


class ShardReader:
    """Whole-shard reads of the arrays, up to ``prefetch`` shards read ahead in threads (the
    decode runs outside the GIL, so they overlap the training loop and each other)."""

    def __init__(self, store: Store, with_images: bool, prefetch: int) -> None:
        self.names = ("w", "label", "image") if with_images else ("w", "label")
        if store.attribute_names:  # the targets of attribute stores (version 2)
            self.names += ("attributes",)
        self.store = store
        self.prefetch = prefetch
        self.pool = ThreadPoolExecutor(max_workers=prefetch) if prefetch > 0 else None
        self.pending: dict[int, object] = {}

    def read(self, shard: int) -> dict:
        return self.store.read_arrays(shard, self.names)

    def gather(self, indices: np.ndarray) -> dict:
        """The samples ``indices`` (any order), reading each shard they touch whole, once."""
        size = self.store.shard_size
        shards = indices // size
        parts: dict[str, np.ndarray] = {}
        for shard in np.unique(shards):
            data = self.read(int(shard))
            sel = shards == shard
            for name, arr in data.items():
                if name not in parts:
                    parts[name] = np.empty((len(indices), *arr.shape[1:]), dtype=arr.dtype)
                parts[name][sel] = arr[indices[sel] - int(shard) * size]
        parts["index"] = indices.astype(np.int64)
        return parts

    def get(self, shard: int, upcoming: list[int]) -> dict:
        """Shard ``shard`` (waiting for its prefetch if any), then schedule ``upcoming``."""
        if self.pool is None:
            return self.read(shard)
        future = self.pending.pop(shard, None)
        for nxt in upcoming[: self.prefetch]:
            if nxt not in self.pending and nxt != shard:
                self.pending[nxt] = self.pool.submit(self.read, nxt)
        return future.result() if future is not None else self.read(shard)

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending.values():
                future.cancel()
            self.pool.shutdown(wait=True)
            self.pending.clear()


def _take(payload: dict, sel) -> dict:
    return {k: v[sel] for k, v in payload.items()}


def _cat(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _len(payload: dict | None) -> int:
    return 0 if payload is None else len(payload["index"])


class WorkerIterator:
    """One worker's batches for one epoch. The shuffle buffer holds copies of its samples (so
    no shard stays pinned by a lingering sample); ``skip`` samples already consumed are
    replayed on indices only, with the same random draws, before any data is read."""

    def __init__(self, ds, epoch: int, rank: int, worker: int, skip: int):
        self.ds, self.worker, self.skip = ds, worker, skip
        self.pieces = ds.pieces(epoch, rank, worker)
        self.rng = np.random.default_rng([ds.seed, epoch, rank, worker])
        self.cap = ds.buffer_size

    def _replay(self) -> tuple[int, np.ndarray | None, np.ndarray | None, bool]:
        """Skip ``self.skip`` samples on indices: (next piece, buffer indices, indices of a
        partly consumed emission still to output, drained)."""
        buffer, to_skip = ShuffleBuffer(self.cap, self.rng), self.skip
        for p, piece in enumerate(self.pieces):
            emitted = buffer.add({"index": np.arange(piece.lo, piece.hi)})
            n = _len(emitted)
            if n and to_skip < n:
                return p + 1, buffer.indices(), emitted["index"][to_skip:], False
            to_skip -= n
            if to_skip == 0:
                return p + 1, buffer.indices(), None, False
        final = buffer.drain()
        rest = None if final is None else final["index"][to_skip:]
        return len(self.pieces), None, rest, True

    def __iter__(self) -> Iterator[dict]:
        ds = self.ds
        reader = ShardReader(ds.store, ds.with_images, ds.prefetch)
        bs = ds.batch_size or 4096
        pending: list[dict] = []
        npending = 0
        try:
            start, buffer, carry, drained = 0, ShuffleBuffer(self.cap, self.rng), None, False
            if self.skip:
                start, buf_idx, carry_idx, drained = self._replay()
                if buf_idx is not None and len(buf_idx):
                    buffer.load(reader.gather(buf_idx))
                carry = (
                    reader.gather(carry_idx) if carry_idx is not None and len(carry_idx) else None
                )
            outputs = self._outputs(reader, start, buffer, drained)
            if carry is not None:
                outputs = _chain([carry], outputs)
            for emitted in outputs:
                pending.append(emitted)
                npending += _len(emitted)
                if npending >= bs:
                    flat = _cat(pending)
                    pos = 0
                    while npending - pos >= bs:
                        yield self._batch(_take(flat, slice(pos, pos + bs)))
                        pos += bs
                    pending = [_take(flat, slice(pos, None))] if pos < npending else []
                    npending -= pos
            if npending:
                yield self._batch(_cat(pending))
        finally:
            reader.close()

    def _outputs(self, reader: ShardReader, start: int, buffer: ShuffleBuffer, drained: bool):
        shards = [pc.shard for pc in self.pieces]
        for p in range(start, len(self.pieces)):
            piece = self.pieces[p]
            data = reader.get(piece.shard, shards[p + 1 :])
            first, _ = self.ds.store.shard_bounds(piece.shard)
            new = _take(data, slice(piece.lo - first, piece.hi - first))
            new["index"] = np.arange(piece.lo, piece.hi, dtype=np.int64)
            emitted = buffer.add(new)
            if _len(emitted):
                yield emitted
        if not drained:
            final = buffer.drain()
            if final is not None:
                yield final

    def _batch(self, out: dict) -> dict:
        # A batch's float16 -> float32 cast is small; torch's parallel cast would wait at a
        # barrier for cores busy with the reader's decode and hash threads (on 2 cores a
        # 256-sample batch took ~4 ms instead of ~0.05 ms). The count is per thread.
        with torch_threads(1):
            batch = {
                # torch widens float16 ~6x faster than numpy (13 vs 2 ms per 4096 x 8 x 128)
                "w": torch.from_numpy(np.ascontiguousarray(out["w"])).float(),
                "label": torch.from_numpy(np.ascontiguousarray(out["label"], dtype=np.int64)),
                "index": torch.from_numpy(np.ascontiguousarray(out["index"], dtype=np.int64)),
                "worker": self.worker,
            }
        if "image" in out:
            batch["image"] = torch.from_numpy(np.ascontiguousarray(out["image"]))
        if "attributes" in out:
            batch["attributes"] = torch.from_numpy(np.ascontiguousarray(out["attributes"]))
        return batch


def _chain(first: list, rest):
    yield from first
    yield from rest
