"""Algorithm 2 (AdvMix), RandMix, l_inf PGD (adversarial training) and mixup, batched.

Pure torch: no store, no Beam. Classifiers are callables taking images in ``[0, 1]``
(``[B, 3, H, W]``) and returning logits; the generator is ``advmix.stylegan.Generator``,
whose synthesis gives images in ``[-1, 1]`` (mapped to ``[0, 1]`` by ``to_unit``).

**AdvMix** (Algorithm 2 of Gowal et al. 2020, batched). The coarse styles ``w[:, :k]`` of each
example (its content, ``z_par``) stay fixed; for each of ``restarts`` restarts the fine styles
start at ``map(z)[:, k:]`` for a fresh ``z`` and take ``steps`` projected ascent steps on the
cross-entropy of the classifier *at the current iterate* (the slide's ``x_tilde^(0)`` in
line 7 is a typo) inside a valid set of fine styles (``advmix.projections``: box, ball or
z-space). Every iterate, the start included, is decoded with ``noise_mode="const"`` (the
coarse layers run once per batch: ``G.synthesis_coarse``) and checked with the 0-1 loss: the
first misclassified mix of an example is kept and that example stops ascending (and leaves
the batch, which is where early stopping saves compute); an example never misclassified keeps
its highest-loss mix. The bookkeeping is gathers and index writes, so on a GPU the only host
sync of an iterate is the count of examples that go on (none without early stop). On a CPU,
when fewer than half go on, their forward pass is redone instead of backpropagating through
the whole batch. The start of restart ``r`` is exactly the RandMix sample drawn from the same
random stream, so AdvMix fools a classifier at least wherever RandMix does.

**RandMix**: one random ``map(z)[:, k:]``, no ascent. **PGD** (AT): l_inf projected gradient
ascent on pixels with a random start; ``eps`` and ``step_size`` are in ``[0, 1]`` pixel units
(4/255 and 8/255 in the paper) and scale with the input range ``hi - lo`` (so ``[-1, 1]``
inputs get twice the radius). **mixup** (Zhang et al. 2018): convex combinations of pairs of
examples and of their one-hot labels, ``lam ~ Beta(alpha, alpha)``, one ``lam`` per batch.

Randomness comes only from the ``torch.Generator`` passed in (CPU), so training can replay
every draw. Attacks put the classifier in eval mode (batch-independent BatchNorm) and restore
its mode afterwards; they never touch parameter gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from advmix.objectives import SINGLE_LABEL, MultiLabel, SingleLabel
from advmix.projections import PROJECTIONS, StyleSet
from advmix.settings import check, setting
from advmix.stylegan import CoarseActivations, Generator, to_unit

Classifier = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class AdvMixConfig:
    """Algorithm 2's budget and valid set: what training, evaluation and the CLI share."""

    steps: int = setting(5, "AdvMix ascent steps K.", flag="attack-steps", low=0, fixed=True)
    restarts: int = setting(1, "AdvMix restarts N_r.", low=1, fixed=True)
    step_size: float = setting(
        0.25, "AdvMix step, relative to the projection set (box width, ball radius, sqrt(z_dim)).",
        low=0, low_open=True, fixed=True,
    )  # fmt: skip
    projection: str = setting(
        "ball", "Valid set of fine styles (advmix/projections.py).",
        choices=tuple(PROJECTIONS), fixed=True,
    )  # fmt: skip
    early_stop: bool = setting(
        True, "Stop ascending for an example once a mix fools the classifier (Algorithm 2).",
        fixed=True,
    )  # fmt: skip
    ball_radius: float = setting(
        0.5, "Ball radius, in median distances between two random fine styles.",
        low=0, low_open=True, fixed=True,
    )  # fmt: skip
    box_quantile: float = setting(
        0.01, "Box bounds: the [q, 1-q] quantiles of random fine styles.", low=0, high=0.5,
        fixed=True,
    )  # fmt: skip
    style_samples: int = setting(
        10_000, "map(z) draws the box or ball is fitted to.", low=2, fixed=True
    )
    mix_images: str = setting(
        "generated", "What a mix looks like: the generator's image of the mixed styles "
        "(Algorithm 2), or the real image plus the change the mix makes to its reconstruction.",
        choices=("generated", "residual"), fixed=True,  # the keys of MIX_IMAGES
    )  # fmt: skip

    def __post_init__(self) -> None:
        check(self)


class _EvalMode:
    """Put a module (if it is one) in eval mode for the duration of a block."""

    def __init__(self, model) -> None:
        self.model = model if isinstance(model, torch.nn.Module) else None

    def __enter__(self):
        if self.model is not None:
            self.was_training = self.model.training
            self.model.eval()

    def __exit__(self, *exc):
        if self.model is not None:
            self.model.train(self.was_training)


# ----------------------------------------------------------------------------------------------
# RandMix and AdvMix


@dataclass
class AttackResult:
    images: Tensor  # [B, 3, H, W] in [0, 1]: the kept mix of every example
    ws: Tensor  # [B, L, D]: its styles
    fooled: Tensor  # [B] bool: the kept mix is misclassified
    loss: Tensor  # [B] cross-entropy of the kept mix
    evaluations: int = 0  # mixes decoded and checked: 1 .. (K + 1) * restarts each
    starts: Tensor | None = None  # [B, 3, H, W]: the first restart's start, a RandMix sample


class GeneratedMixes:
    """A mix is the generator's image of the mixed styles (Algorithm 2)."""

    @classmethod
    def make(cls, x: Tensor, reconstruction: Callable[[], Tensor]) -> GeneratedMixes:
        return cls()

    def __call__(self, rows: Tensor, decoded: Tensor) -> Tensor:
        return decoded


class ResidualMixes:
    """A mix is the real image plus the change the new fine styles make to its reconstruction,
    ``x + G(mix) - G(w)``: the image keeps the real details the generator cannot reproduce, so a
    classifier cannot tell mixes from real images by their blur and keep using colour on the
    sharp ones."""

    def __init__(self, x: Tensor, reconstruction: Tensor) -> None:
        self.detail = (x - reconstruction).detach()  # [B, C, H, W]

    @classmethod
    def make(cls, x: Tensor, reconstruction: Callable[[], Tensor]) -> ResidualMixes:
        return cls(x, reconstruction())

    def __call__(self, rows: Tensor, decoded: Tensor) -> Tensor:
        return (decoded + self.detail[rows]).clamp(0.0, 1.0)


MIX_IMAGES = {"generated": GeneratedMixes, "residual": ResidualMixes}  # AdvMixConfig.mix_images


def mix_images(kind: str, x: Tensor | None, reconstruction: Callable[[], Tensor]):
    """The images mixes become; without real images (a store without them) the generated ones.
    ``reconstruction`` is only called by kinds that need ``G(w)``."""
    return GeneratedMixes() if x is None else MIX_IMAGES[kind].make(x, reconstruction)


@torch.no_grad()
def randmix(
    G: Generator, w: Tensor, k: int, generator: torch.Generator | None = None,
    x: Tensor | None = None, kind: str = "generated",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """RandMix: (images in [0, 1], styles) with the fine styles of one random ``map(z)``
    (``kind`` and the real images ``x``: ``AdvMixConfig.mix_images``)."""
    device = w.device
    fine = G.mapping(torch.randn((len(w), G.z_dim), generator=generator).to(device))[:, k:]
    ws = torch.cat([w[:, :k], fine], dim=1)
    look = mix_images(kind, x, lambda: to_unit(G.synthesis(w, noise_mode="const")))
    rows = torch.arange(len(w), device=device)
    return look(rows, to_unit(G.synthesis(ws, noise_mode="const"))), ws


class KeptMixes:
    """Per example: the first misclassified mix, else the highest-loss one so far."""

    def __init__(self, fine: Tensor, channels: int, resolution: int) -> None:
        batch, device = len(fine), fine.device
        self.fine = fine  # [B, L - k, D]: the kept mix's styles are cat([w[:, :k], fine])
        self.images = torch.zeros((batch, channels, resolution, resolution), device=device)
        self.loss = torch.full((batch,), -math.inf, device=device)
        self.fooled = torch.zeros(batch, dtype=torch.bool, device=device)

    def record(self, idx: Tensor, fine: Tensor, images: Tensor, wrong: Tensor, loss: Tensor):
        """Offer the mixes of examples ``idx``: gathers and index writes, no host sync."""
        was_fooled, kept_loss = self.fooled[idx], self.loss[idx]
        better = ~was_fooled & (wrong | (loss > kept_loss))
        self.loss[idx] = torch.where(better, loss.detach(), kept_loss)
        self.fine[idx] = torch.where(better[:, None, None], fine.detach(), self.fine[idx])
        self.images[idx] = torch.where(better[:, None, None, None], images.detach(),
                                       self.images[idx])  # fmt: skip
        self.fooled[idx] = was_fooled | wrong


@dataclass
class Ascent:
    """The examples of one restart that are still ascending."""

    cur: Tensor  # their iterates (fine styles, or z for z-space), requiring grad
    idx: Tensor  # their rows in the batch
    coarse: CoarseActivations  # their content, synthesised up to the first fine layer
    y: Tensor  # their labels
    start: Tensor  # their first iterates (the projection's anchor)

    def keep(self, rows: Tensor, cur: Tensor) -> Ascent:
        """The same ascent for ``rows`` only, continuing from ``cur`` (all examples' iterates)."""
        return Ascent(cur[rows].detach().requires_grad_(True), self.idx[rows],
                      self.coarse.select(rows), self.y[rows], self.start[rows])  # fmt: skip


def advmix(
    model: Classifier,
    G: Generator,
    w: Tensor,
    y: Tensor,
    k: int,
    style_set: StyleSet,
    cfg: AdvMixConfig | None = None,
    generator: torch.Generator | None = None,
    objective: SingleLabel | MultiLabel = SINGLE_LABEL,
    x: Tensor | None = None,
) -> AttackResult:
    """Algorithm 2, batched; see the module docstring. ``w`` [B, L, D], ``y`` the targets
    (``objective``: [B] classes, or [B, A] attributes, where any wrong attribute fools);
    ``x`` the real images, which ``cfg.mix_images == "residual"`` mixes are made from."""
    cfg = cfg or AdvMixConfig()
    w = w.detach().to(torch.float32)
    kept = KeptMixes(w[:, k:].clone(), G.cfg.img_channels, G.cfg.resolution)
    evaluations, starts = 0, None
    with torch.no_grad():  # the content of every mix: computed once, not per iterate
        coarse = G.synthesis_coarse(w[:, :k], noise_mode="const")
        look = mix_images(cfg.mix_images, x, lambda: to_unit(G.synthesis_fine(coarse, w[:, k:])))

    def loss_of(a: Ascent) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(fine styles, images, logits, per-example cross-entropy) at the current iterate."""
        fine = style_set.fine(G, a.cur)
        images = look(a.idx, to_unit(G.synthesis_fine(a.coarse, fine)))
        logits = model(images)
        return fine, images, logits, objective.loss(logits, a.y)

    with _EvalMode(model), torch.enable_grad():
        for _ in range(cfg.restarts):
            z = torch.randn((len(w), G.z_dim), generator=generator).to(w.device)  # for all rows
            idx = torch.nonzero(~kept.fooled).flatten()
            if len(idx) == 0:
                break
            start = style_set.start(G, z[idx])  # z_perp^(0) = map(z)_perp
            a = Ascent(start.clone().requires_grad_(True), idx, coarse.select(idx), y[idx], start)
            for step in range(cfg.steps + 1):
                fine, images, logits, loss = loss_of(a)
                wrong = objective.wrong(logits, a.y)  # the 0-1 loss
                if starts is None:  # every row's first iterate: a RandMix sample, for free
                    starts = images.detach()
                evaluations += len(a.idx)
                kept.record(a.idx, fine, images, wrong, loss)
                if step == cfg.steps:
                    break
                going_on = None  # rows of ``a`` that go on, when not all of them
                if cfg.early_stop:
                    going_on = torch.nonzero(~wrong).flatten()  # the one host sync of an iterate
                    if len(going_on) == 0:
                        break
                    going_on = going_on if len(going_on) < len(a.idx) else None
                if going_on is not None and 2 * len(going_on) <= len(a.idx) and w.is_cpu:
                    # Few go on: on a CPU (compute-bound) their forward pass again costs less
                    # than a backward pass through the whole batch (about two forwards). A GPU
                    # at these sizes is launch-bound: the extra pass would only add launches.
                    a = a.keep(going_on, a.cur)
                    loss = loss_of(a)[-1]
                    going_on = None
                (grad,) = torch.autograd.grad(loss.sum(), a.cur)  # ascend at the current iterate
                with torch.no_grad():
                    nxt = style_set.project(style_set.step(a.cur, grad, cfg.step_size), a.start)
                if going_on is not None:
                    a = a.keep(going_on, nxt)
                else:
                    a.cur = nxt.detach().requires_grad_(True)
    best_ws = torch.cat([w[:, :k], kept.fine], dim=1)
    return AttackResult(kept.images.detach(), best_ws, kept.fooled, kept.loss, evaluations, starts)


# ----------------------------------------------------------------------------------------------
# Pixel-space PGD (adversarial training) and mixup


def pgd_linf(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 7,
    step_size: float | None = None,
    random_start: bool = True,
    lo: float = 0.0,
    hi: float = 1.0,
    generator: torch.Generator | None = None,
    objective: SingleLabel | MultiLabel = SINGLE_LABEL,
) -> Tensor:
    """l_inf PGD (Madry et al.): ``eps`` and ``step_size`` in [0, 1] pixel units, scaled to the
    input range ``[lo, hi]``; returns ``x_adv`` with ``|x_adv - x| <= eps * (hi - lo)``."""
    scale = hi - lo
    radius = eps * scale
    alpha = (step_size if step_size is not None else 2.5 * eps / max(steps, 1)) * scale
    x = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        adv = (x + radius * noise).clamp(lo, hi)
    else:
        adv = x.clone()
    with _EvalMode(model), torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = objective.mean_loss(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + alpha * grad.sign()
                adv = torch.min(torch.max(adv, x - radius), x + radius).clamp(lo, hi)
    return adv.detach()


def mixup(
    x: Tensor, y: Tensor, alpha: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, float]:
    """(mixed inputs, labels a, labels b, lam): ``lam * x + (1 - lam) * x[perm]``."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample() if generator is None else
                _beta(alpha, generator))  # fmt: skip
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def _beta(alpha: float, generator: torch.Generator) -> float:
    # Beta(a, a) from two Gamma(a) draws of the given generator (torch's Beta takes none).
    a = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
    return float(a[0] / a.sum())


mixup_loss = SINGLE_LABEL.mixup_loss  # classes; MULTI_LABEL.mixup_loss mixes attributes
