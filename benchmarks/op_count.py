"""Count the ATen operators a piece of code runs, and the ones that wait for the device.

On a GPU these small networks are launch-bound: a step costs about one kernel launch per
operator plus a full stall per host sync (``nonzero``, ``.item()``, boolean-mask indexing),
whatever the batch size. Counting operators on the CPU measures that cost exactly and
repeatably, without a GPU. Forward and backward operators are both counted (the autograd
engine dispatches on the calling thread); views launch nothing and are left out.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNCING = {"aten::nonzero", "aten::_local_scalar_dense", "aten::masked_select", "aten::item"}


def _syncs(func, args) -> bool:
    name = func._schema.name
    if name in _SYNCING:
        return True
    if name in ("aten::index", "aten::index_put", "aten::index_put_"):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices)
    return False


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: ...``; then ``c.ops`` (non-view operators), ``c.syncs``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()
        self.ops = 0
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops += 1
            self.by_name[func._schema.name] += 1
            self.syncs += _syncs(func, args)
        return func(*args, **(kwargs or {}))
