"""The stream's shuffle buffer: samples are copied in once and out once.

Semantics (what a seed reproduces): the pool is the buffered samples in their logical order
followed by the new ones; once the pool exceeds ``capacity``, ``perm = rng.permutation(len)``
and ``pool[perm[:excess]]`` is emitted while ``pool[perm[excess:]]`` stays, in that order;
``drain`` emits ``buffer[rng.permutation(len)]``. A direct version concatenates and gathers the
whole pool for every shard (five copies of every sample at the stream's defaults); this one
keeps samples in fixed slots and permutes an array of slot numbers instead, with the same draws
and therefore the same samples in the same order.
"""

from __future__ import annotations

import numpy as np

Payload = dict[str, np.ndarray]  # equal-length arrays, one row per sample


class ShuffleBuffer:
    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity, self.rng = capacity, rng
        self.slots: Payload = {}  # storage; grows to capacity + the largest piece added
        self.order = np.empty(0, dtype=np.int64)  # the slot of each sample, in logical order
        self.free = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.order)

    def load(self, payload: Payload) -> None:
        """Start from ``payload`` as the buffer's contents, in that logical order (resume)."""
        n = len(payload["index"])
        self.slots = {k: np.array(v) for k, v in payload.items()}
        self.order, self.free = np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64)

    def add(self, new: Payload) -> Payload | None:
        """Add ``new`` samples; returns the samples that leave the buffer, or None."""
        if self.capacity <= 0:
            return new
        pool = np.concatenate([self.order, self._place(new)])
        if len(pool) <= self.capacity:
            self.order = pool
            return None
        perm = self.rng.permutation(len(pool))
        excess = len(pool) - self.capacity
        leaving = pool[perm[:excess]]
        self.order = pool[perm[excess:]]
        self.free = np.concatenate([self.free, leaving])
        return {k: v[leaving] for k, v in self.slots.items()}

    def drain(self) -> Payload | None:
        """Everything left, shuffled; the buffer is empty afterwards."""
        if len(self.order) == 0:
            return None
        leaving = self.order[self.rng.permutation(len(self.order))]
        self.free = np.concatenate([self.free, leaving])
        self.order = np.empty(0, dtype=np.int64)
        return {k: v[leaving] for k, v in self.slots.items()}

    def indices(self) -> np.ndarray | None:
        """The buffered samples' ``index`` values in logical order, or None when empty."""
        return self.slots["index"][self.order] if len(self.order) else None

    def _place(self, new: Payload) -> np.ndarray:
        """Copy ``new`` into free slots, growing the storage when too few are free."""
        count = len(new["index"])
        if len(self.free) < count:
            self._grow(new, count - len(self.free))
        placed, self.free = self.free[:count], self.free[count:]
        for key, values in new.items():
            self.slots[key][placed] = values
        return placed

    def _grow(self, like: Payload, extra: int) -> None:
        size = len(self.slots["index"]) if self.slots else 0
        extra = max(extra, self.capacity + len(like["index"]) - size)  # one allocation, usually
        grown = {}
        for key, values in like.items():
            storage = np.empty((size + extra, *values.shape[1:]), dtype=values.dtype)
            if self.slots:
                storage[:size] = self.slots[key]
            grown[key] = storage
        self.slots = grown
        self.free = np.concatenate([self.free, np.arange(size, size + extra, dtype=np.int64)])
