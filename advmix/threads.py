"""Torch's intra-op thread count for one block of code.

CPU float results depend on the thread count (so a store's bytes do), and torch's parallel
kernels wait at a barrier for cores that other threads may hold; both are reasons to pin it for
a block and then give the caller its own count back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads (``None``: as they are), then restore the
    calling thread's own count (torch keeps it per thread)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
