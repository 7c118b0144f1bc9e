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
from advmix.errors import AdvmixError
from advmix.objectives import SINGLE_LABEL, MultiLabel, SingleLabel
from advmix.projections import StyleSet
from advmix.stylegan import Generator

if TYPE_CHECKING:
    from training.config import TrainConfig

# "+random": AdvMix's random starts too (RandMix samples the attack decodes anyway).
TRAIN_ON = ("both", "mixes", "both+random", "mixes+random")


@dataclass
class MethodContext:
    """What a method may use besides the batch: the classifier, the generator and settings."""

    model: nn.Module  # the classifier itself (not its DDP wrapper): attacks only read it
    G: Generator
    k: int
    style_set: StyleSet
    cfg: TrainConfig
    objective: SingleLabel | MultiLabel = SINGLE_LABEL  # classes, or attributes at once
    # Set by the trainer before each batch, for methods that read them (IRMv1):
    step: int = 0  # steps taken so far
    env: Tensor | None = None  # [B] environment of each example (the store's env column)


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


def with_perturbed(ctx: MethodContext, x: Tensor, y: Tensor, *perturbed: Tensor, info=None):
    """The nominal batch (``train_on`` "both", "both+random") and every perturbed copy of it."""
    inputs = [x, *perturbed] if ctx.cfg.train_on.startswith("both") else list(perturbed)
    return TrainBatch(torch.cat(inputs), y.repeat(len(inputs), *[1] * (y.dim() - 1)),
                      ctx.objective, info or {})  # fmt: skip


def nominal(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    return TrainBatch(x, y, ctx.objective)


def adversarial(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    """AT: l_inf PGD on pixels."""
    cfg = ctx.cfg
    adv = attacks.pgd_linf(ctx.model, x, y, cfg.eps, steps=cfg.pgd_steps, generator=generator,
                           objective=ctx.objective)  # fmt: skip
    return with_perturbed(ctx, x, y, adv)


def randmix(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    images, _ = attacks.randmix(ctx.G, w, ctx.k, generator, x, ctx.cfg.attack.mix_images)
    return with_perturbed(ctx, x, y, images, info={"evaluations": len(y)})


def advmix(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    result = attacks.advmix(ctx.model, ctx.G, w, y, ctx.k, ctx.style_set, ctx.cfg.attack,
                            generator, ctx.objective, x)  # fmt: skip
    info = {"fooled": result.fooled.float().mean().item(), "evaluations": result.evaluations}
    extra = (result.starts,) if ctx.cfg.train_on.endswith("+random") else ()
    return with_perturbed(ctx, x, y, result.images, *extra, info=info)


def mixup(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    mixed, y_a, y_b, lam = attacks.mixup(x, y, ctx.cfg.mixup_alpha, generator)
    return MixupBatch(mixed, y_a, ctx.objective, targets_b=y_b, lam=lam)


def irm_penalty(logits: Tensor, targets: Tensor, objective) -> Tensor:
    """IRMv1's penalty (Arjovsky et al. 2019): the squared gradient of the risk with respect
    to a dummy scale of 1.0 on the logits, kept in the graph so the model trains on it."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    risk = objective.mean_loss(logits * scale, targets)
    (grad,) = torch.autograd.grad(risk, [scale], create_graph=True)
    return grad.pow(2)


@dataclass
class IRMBatch(TrainBatch):
    """IRMv1's loss: mean per-environment risk plus ``penalty_weight`` times the mean
    per-environment penalty, divided by the weight once it exceeds 1 (as the reference code
    does, to keep gradients in range); environments missing from a batch are left out."""

    envs: Tensor | None = None
    penalty_weight: float = 1.0

    def loss(self, logits: Tensor) -> Tensor:
        risks, penalties = [], []
        for env in torch.unique(self.envs):
            mine = self.envs == env
            risks.append(self.objective.mean_loss(logits[mine], self.targets[mine]))
            penalties.append(irm_penalty(logits[mine], self.targets[mine], self.objective))
        loss = torch.stack(risks).mean() + self.penalty_weight * torch.stack(penalties).mean()
        return loss / self.penalty_weight if self.penalty_weight > 1.0 else loss


def irm_weight(cfg: TrainConfig, step: int) -> float:
    """1 for the first ``irm_anneal_steps`` steps, then ``irm_penalty_weight``."""
    return cfg.irm_penalty_weight if step >= cfg.irm_anneal_steps else 1.0


def irm(ctx: MethodContext, x, w, y, generator) -> TrainBatch:
    """IRMv1 on the nominal batch, with the environments the store's ``env`` column gives."""
    if ctx.env is None:
        raise AdvmixError("--method irm needs environments: the store has no 'env' column")
    return IRMBatch(x, y, ctx.objective, envs=ctx.env, penalty_weight=irm_weight(ctx.cfg, ctx.step))


# Methods that read the store's environment column (ENV_COLUMN) through MethodContext.env.
NEEDS_ENV = ("irm",)
ENV_COLUMN = "env"

METHODS: dict[str, Callable[..., TrainBatch]] = {
    "nominal": nominal,
    "at": adversarial,
    "randmix": randmix,
    "advmix": advmix,
    "mixup": mixup,
    "irm": irm,
}


def env_column(method: str, store) -> int | None:
    """The column of ``store``'s attributes holding environments, when ``method`` needs them;
    a store without one is a one-line error."""
    if method not in NEEDS_ENV:
        return None
    names = tuple(getattr(store, "attribute_names", ()) or ())
    if ENV_COLUMN not in names:
        raise AdvmixError(
            f"--method {method} needs environment labels: {store.url} has no {ENV_COLUMN!r} "
            "column (encode irmcf:train, or a folder with an --attributes table holding env)"
        )
    return names.index(ENV_COLUMN)
