"""The training methods: each turns a batch of the stream into the batch the classifier trains on.

``METHODS`` maps a method's name to a function ``(ctx, x, w, y, generator) -> TrainBatch``:
``x`` are the nominal images in [0, 1], ``w`` their styles, ``y`` their labels, and every
random draw comes from ``generator`` (seeded per step by the trainer, so a resumed run replays
it). Methods that perturb examples train on the nominal batch and its perturbed copy
(``train_on="both"``, 2B inputs) or on the perturbed copy alone (``"mixes"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from advmix import attacks
from advmix.objectives import SINGLE_LABEL, MultiLabel, SingleLabel
from advmix.projections import StyleSet
from advmix.stylegan import Generator

if TYPE_CHECKING:
    from training.config import TrainConfig

TRAIN_ON = ("both", "mixes")


@dataclass
class MethodContext:
    """What a method may use besides the batch: the classifier, the generator and settings."""

    model: nn.Module  # the classifier itself (not its DDP wrapper): attacks only read it
    G: Generator
    k: int
    style_set: StyleSet
    cfg: TrainConfig
    objective: SingleLabel | MultiLabel = SINGLE_LABEL  # classes, or attributes at once


@dataclass
class TrainBatch:
    """Inputs and targets to train on, and what the method measured while making them."""

    inputs: Tensor
    targets: Tensor
    objective: SingleLabel | MultiLabel = SINGLE_LABEL
    info: dict = field(default_factory=dict)

    def loss(self, logits: Tensor) -> Tensor:
        return self.objective.mean_loss(logits, self.targets)

    def accuracy(self, logits: Tensor) -> Tensor:
        return self.objective.correct(logits, self.targets).float().mean()


@dataclass
class MixupBatch(TrainBatch):
    """Convex combinations of pairs: targets ``targets`` (weight ``lam``) and ``targets_b``."""

    targets_b: Tensor | None = None
    lam: float = 1.0

    def loss(self, logits: Tensor) -> Tensor:
        return self.objective.mixup_loss(logits, self.targets, self.targets_b, self.lam)

    def accuracy(self, logits: Tensor) -> Tensor:
        hits_a = self.objective.correct(logits, self.targets).float()
        hits_b = self.objective.correct(logits, self.targets_b).float()
        return (self.lam * hits_a + (1 - self.lam) * hits_b).mean()


def with_perturbed(ctx: MethodContext, x: Tensor, y: Tensor, perturbed: Tensor, info=None):
    if ctx.cfg.train_on == "both":
        return TrainBatch(torch.cat([x, perturbed]), torch.cat([y, y]), ctx.objective, info or {})
    return TrainBatch(perturbed, y, ctx.objective, info or {})


def nominal(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    return TrainBatch(x, y, ctx.objective)


def adversarial(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    """AT: l_inf PGD on pixels."""
    cfg = ctx.cfg
    adv = attacks.pgd_linf(ctx.model, x, y, cfg.eps, steps=cfg.pgd_steps, generator=generator,
                           objective=ctx.objective)  # fmt: skip
    return with_perturbed(ctx, x, y, adv)


def randmix(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    images, _ = attacks.randmix(ctx.G, w, ctx.k, generator)
    return with_perturbed(ctx, x, y, images, {"evaluations": len(y)})


def advmix(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    result = attacks.advmix(ctx.model, ctx.G, w, y, ctx.k, ctx.style_set, ctx.cfg.attack,
                            generator, ctx.objective)  # fmt: skip
    info = {"fooled": result.fooled.float().mean().item(), "evaluations": result.evaluations}
    return with_perturbed(ctx, x, y, result.images, info)


def mixup(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    mixed, y_a, y_b, lam = attacks.mixup(x, y, ctx.cfg.mixup_alpha, generator)
    return MixupBatch(mixed, y_a, ctx.objective, targets_b=y_b, lam=lam)


METHODS: dict[str, Callable[..., TrainBatch]] = {
    "nominal": nominal,
    "at": adversarial,
    "randmix": randmix,
    "advmix": advmix,
    "mixup": mixup,
}
