"""What a run trains its classifier to predict, from a store: its class labels, one binary
attribute (``--target Smiling``) or several at once (``--target Smiling --target Male``).

One store serves every target: CelebA's store holds all 40 attributes, and each run of the
paper's table picks its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from advmix.errors import AdvmixError
from advmix.objectives import MULTI_LABEL, SINGLE_LABEL, MultiLabel, SingleLabel


@dataclass(frozen=True)
class Targets:
    names: tuple[str, ...]  # attribute names; () for the store's class labels
    columns: tuple[int, ...]  # their columns in the store's attributes array
    objective: SingleLabel | MultiLabel
    num_outputs: int  # logits the classifier needs

    def of(self, batch: dict) -> Tensor:
        """The targets of a stream batch: [B] classes, or [B, A] attributes (0/1)."""
        if not self.names:
            return batch["label"]
        values = batch["attributes"][:, list(self.columns)].long()
        return values[:, 0] if len(self.columns) == 1 else values

    @property
    def labels(self) -> list[str]:
        """Names of the predicted quantities, for per-target tables."""
        return list(self.names) or ["class"]


def resolve_targets(names, store, num_classes: int | None = None) -> Targets:
    """``names`` (``--target``, possibly none) checked against ``store``'s attributes."""
    names = tuple(names or ())
    if not names:
        classes = num_classes or max(len(store.label_names), 2)
        return Targets((), (), SINGLE_LABEL, classes)
    available = tuple(getattr(store, "attribute_names", ()) or ())
    if not available:
        raise AdvmixError(
            f"--target {names[0]}: {store.url} is a store without attributes (schema version "
            f"{store.manifest.schema_version}); its one target is its class labels: train "
            "without --target"
        )
    unknown = [n for n in names if n not in available]
    if unknown:
        shown = ", ".join(available[:12]) + (", ..." if len(available) > 12 else "")
        raise AdvmixError(f"--target {unknown[0]}: not an attribute of {store.url} ({shown})")
    if len(set(names)) != len(names):
        raise AdvmixError(f"--target given twice: {', '.join(names)}")
    columns = tuple(available.index(n) for n in names)
    if len(names) == 1:  # one binary attribute: two classes, as the paper trains them
        return Targets(names, columns, SINGLE_LABEL, 2)
    return Targets(names, columns, MULTI_LABEL, len(names))
