"""What a classifier predicts, as training and the attacks see it: one class, or several binary
attributes at once.

- ``SingleLabel``: logits [B, C], targets [B] class indices (a dataset's classes, or one
  binary attribute as classes 0/1): cross-entropy, and an example is misclassified when the
  argmax differs.
- ``MultiLabel``: logits [B, A], targets [B, A] of 0/1 (CelebA's attributes, say): the mean
  over attributes of the binary cross-entropy, and an example is misclassified when any of its
  attributes is (the 0-1 loss AdvMix stops at); accuracy is per attribute.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


class SingleLabel:
    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """[B] per-example loss."""
        return F.cross_entropy(logits, y, reduction="none")

    def mean_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y)

    def wrong(self, logits: Tensor, y: Tensor) -> Tensor:
        """[B] bool: the example is misclassified."""
        return logits.argmax(dim=1) != y

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        """[B, T] bool per target (T = 1 here)."""
        return (logits.argmax(dim=1) == y)[:, None]

    def mixup_loss(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float) -> Tensor:
        return lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)


class MultiLabel:
    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1)

    def mean_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.float())

    def wrong(self, logits: Tensor, y: Tensor) -> Tensor:
        return (~self.correct(logits, y)).any(dim=1)

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        return (logits > 0) == y.bool()

    def mixup_loss(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float) -> Tensor:
        soft = lam * y_a.float() + (1 - lam) * y_b.float()
        return F.binary_cross_entropy_with_logits(logits, soft)


SINGLE_LABEL = SingleLabel()
MULTI_LABEL = MultiLabel()
