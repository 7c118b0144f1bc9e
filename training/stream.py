"""Streaming a latent store into training: whole-shard reads, a shuffle buffer, exact resume.

    stream = LatentStream("s3://bucket/cfmnist.zarr", storage_options, batch_size=64, seed=0)
    loader = stream.loader(num_workers=2)         # a DataLoader with batch_size=None
    for epoch in range(epochs):
        stream.set_epoch(epoch)
        for batch in loader:                      # {"w", "label", "image", "index", "worker"}
            stream.observe(batch)                 # count what this rank consumed
            ...
        state = stream.state_dict()               # small JSON-able dict, in the checkpoint

The epoch's sample order (a deterministic function of the seed and the epoch):

1. **Shard order**: the shard ids permuted by ``default_rng([seed, epoch])``, the same on every
   rank. Concatenating the permuted shards gives the epoch's global sequence of N samples.
2. **Rank split**: rank ``r`` of ``R`` takes the contiguous span ``[r*N//R, (r+1)*N//R)`` of
   that sequence; **worker split**: DataLoader worker ``w`` of ``W`` takes the same balanced
   contiguous sub-span of its rank's span. Spans are disjoint and cover the epoch: no sample
   is duplicated or dropped. The remainder is spread: span sizes differ by at most one
   sample (ranks get ``N//R`` or ``N//R + 1``), so under DDP ranks can have one batch more
   than others; the trainer runs them under ``DistributedDataParallel.join`` (uneven
   inputs) instead of padding with duplicates or dropping samples. A shard cut by a span
   boundary is read whole by both sides, each keeping its own part: reads stay whole-shard
   (one GET per array) and a span reads at most two shards more than it owns.
3. **Shuffle buffer** (per worker, ``default_rng([seed, epoch, rank, worker])``): each shard
   piece is appended to a pool of at most ``buffer_size`` samples; when the pool exceeds
   the buffer, a random permutation of the pool emits the surplus and keeps the rest; at the
   end of the span the pool drains in random order (``training/shuffle.py`` does this with
   one copy in and one out per sample). Memory is the buffer plus the shards in flight
   (current + ``prefetch``), independent of the store size. ``buffer_size=0`` or
   ``shuffle=False`` gives the plain span order (shards still permuted when shuffling).
4. **Batches**: the worker cuts its output into batches of ``batch_size`` (its last one may
   be short). With ``W`` workers the DataLoader returns workers' batches round-robin.

Resume: ``state_dict()`` holds the epoch, the seed and the number of samples consumed from
each worker (``observe`` counts them from the ``worker`` field of each batch). After
``load_state_dict`` the next iteration replays each worker's buffer on sample indices only
(no data read), re-reads the shards its buffer still needs, and continues at the next unseen
sample: the resumed run sees exactly the samples the interrupted one had not consumed, in the
same order. World size, worker count, batch size, buffer size and seed must match the state.

Background threads read the next ``prefetch`` shards while the current one is consumed
(``Store.read_arrays`` decodes outside the GIL, so they overlap the training loop).
Only the arrays are read (``w``, ``label`` and ``image`` when the store has it): never the
Parquet index, whose size grows with the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from advmix.errors import AdvmixError
from schemas.reader import Store, open_store
from training.span import WorkerIterator

STATE_FORMAT = "advmix-stream-state"


class StreamError(AdvmixError):
    """A stream state that does not fit this stream, or a bad stream setting."""


def balanced_bounds(total: int, parts: int, part: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of part ``part`` when ``total`` items go to ``parts``."""
    return (part * total) // parts, ((part + 1) * total) // parts


@dataclass(frozen=True)
class Piece:
    """Samples ``lo .. hi-1`` (global indices) of shard ``shard``."""

    shard: int
    lo: int
    hi: int


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class LatentStream(IterableDataset):
    """Batches (or single samples) of a latent store at any fsspec URL; see the module doc."""

    def __init__(
        self,
        store: Store | str,
        storage_options: dict | None = None,
        *,
        batch_size: int | None = 64,
        seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 4096,
        prefetch: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        with_images: bool = True,
        expect_generator: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(store, str):
            store = open_store(store, storage_options, expect_generator=expect_generator)
        self.store = store
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.buffer_size = int(buffer_size) if shuffle else 0
        self.prefetch = max(0, int(prefetch))
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.num_workers = int(num_workers)
        self.with_images = bool(with_images and store.has_images)
        if batch_size is not None and batch_size < 1:
            raise StreamError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise StreamError(f"rank {self.rank} out of range for world size {self.world_size}")
        self.epoch = 0
        self._skip = [0] * max(1, self.num_workers)
        self.consumed = [0] * max(1, self.num_workers)

    # -- epoch plan ---------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return self.store.num_samples

    def shard_order(self, epoch: int) -> np.ndarray:
        shards = np.arange(self.store.num_shards)
        if not self.shuffle:
            return shards
        return np.random.default_rng([self.seed, epoch]).permutation(shards)

    def span(self, epoch: int, rank: int, worker: int) -> tuple[int, int]:
        """Positions ``[a, b)`` of the epoch's global sequence that (rank, worker) reads."""
        a, b = balanced_bounds(self.num_samples, self.world_size, rank)
        wa, wb = balanced_bounds(b - a, max(1, self.num_workers), worker)
        return a + wa, a + wb

    def worker_sizes(self, rank: int | None = None) -> list[int]:
        rank = self.rank if rank is None else rank
        return [b - a for a, b in (self.span(0, rank, w) for w in range(max(1, self.num_workers)))]

    def num_batches(self, rank: int | None = None) -> int:
        """Batches the DataLoader yields on ``rank`` in one epoch (every epoch the same)."""
        bs = self.batch_size or 1
        return sum(-(-n // bs) for n in self.worker_sizes(rank))

    def pieces(self, epoch: int, rank: int, worker: int) -> list[Piece]:
        """The shard pieces covering the span of (rank, worker), in epoch order."""
        a, b = self.span(epoch, rank, worker)
        out, pos = [], 0
        for shard in self.shard_order(epoch):
            start, stop = self.store.shard_bounds(int(shard))
            n = stop - start
            lo, hi = max(a, pos), min(b, pos + n)
            if lo < hi:
                out.append(Piece(int(shard), start + lo - pos, start + hi - pos))
            pos += n
            if pos >= b:
                break
        return out

    # -- state --------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (drops any resume point)."""
        self.epoch = int(epoch)
        self._skip = [0] * max(1, self.num_workers)
        self.consumed = [0] * max(1, self.num_workers)

    def observe(self, batch: dict) -> None:
        """Count a batch (or sample) the training loop consumed, for ``state_dict``."""
        self.consumed[int(batch["worker"])] += int(
            len(batch["index"]) if batch["index"].ndim else 1
        )

    @property
    def samples_consumed(self) -> int:
        return int(sum(self.consumed))

    def epoch_done(self) -> bool:
        return self.consumed == self.worker_sizes()

    def state_dict(self) -> dict:
        """Plain ints and strings only (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "samples_consumed": self.samples_consumed,
            "consumed": list(self.consumed),
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "buffer_size": self.buffer_size,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StreamError("not a stream state")
        for key in (
            "seed", "shuffle", "world_size", "num_workers", "batch_size", "buffer_size",
            "num_samples",
        ):  # fmt: skip
            if state[key] != getattr(self, key):
                was, now = state[key], getattr(self, key)
                raise StreamError(f"cannot resume the stream: {key} was {was!r}, now {now!r}")
        consumed = [int(c) for c in state["consumed"]]
        sizes = self.worker_sizes(state.get("rank", self.rank))
        if len(consumed) != len(sizes) or any(
            c < 0 or c > s for c, s in zip(consumed, sizes, strict=True)
        ):
            raise StreamError(f"stream state consumed counts {consumed} do not fit spans {sizes}")
        self.epoch = int(state["epoch"])
        self.rank = int(state.get("rank", self.rank))
        self._skip = list(consumed)
        self.consumed = list(consumed)

    # -- iteration ----------------------------------------------------------------------------

    def loader(self, num_workers: int | None = None, **kwargs) -> StreamLoader:
        """A DataLoader over this stream (batching is done here, so ``batch_size=None``) that
        returns batches in the uninterrupted run's order, also right after a resume."""
        workers = self.num_workers if num_workers is None else num_workers
        if workers != self.num_workers:
            raise StreamError(f"stream built for {self.num_workers} workers, loader asks {workers}")
        if workers > 0:
            kwargs.setdefault("multiprocessing_context", "fork" if os.name == "posix" else None)
            kwargs.setdefault("prefetch_factor", 2)
        return StreamLoader(self, DataLoader(self, batch_size=None, num_workers=workers, **kwargs))

    def batch_order(self) -> list[int]:
        """Worker id of each batch still to come this epoch, in the DataLoader's round-robin
        order of an uninterrupted epoch (workers that run out drop out of the rotation)."""
        bs = self.batch_size or 1
        counts = [-(-n // bs) for n in self.worker_sizes()]
        done = [-(-c // bs) for c in self._skip]
        order, seen = [], [0] * len(counts)
        for r in range(max(counts, default=0)):
            for w, n in enumerate(counts):
                if r < n:
                    if seen[w] >= done[w]:
                        order.append(w)
                    seen[w] += 1
        return order

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        count = 1 if info is None else info.num_workers
        if count != max(1, self.num_workers):
            raise StreamError(
                f"stream built for {self.num_workers} workers but runs in {count}; build it "
                "with num_workers matching the DataLoader"
            )
        it = WorkerIterator(self, self.epoch, self.rank, worker, self._skip[worker])
        if self.batch_size is None:
            for batch in it:
                for i in range(len(batch["index"])):
                    yield {k: (v[i] if k != "worker" else v) for k, v in batch.items()}
        else:
            yield from it


class StreamLoader:
    """Iterates a DataLoader over a ``LatentStream`` and puts worker batches back into the
    order an uninterrupted epoch has (after a resume the DataLoader restarts its rotation at
    worker 0, while the interrupted epoch may have stopped anywhere in it)."""

    def __init__(self, stream: LatentStream, loader: DataLoader) -> None:
        self.stream, self.loader = stream, loader

    def __len__(self) -> int:
        return len(self.stream.batch_order())

    def __iter__(self) -> Iterator[dict]:
        order = self.stream.batch_order()
        if self.stream.num_workers <= 1 or self.stream.batch_size is None:
            yield from self.loader
            return
        stash: dict[int, list] = {}
        it = iter(self.loader)
        for want in order:
            while not stash.get(want):
                batch = next(it)
                stash.setdefault(int(batch["worker"]), []).append(batch)
            yield stash[want].pop(0)
        for _ in it:  # nothing is left; finish the iterator so workers shut down cleanly
            raise StreamError("stream yielded more batches than planned")
