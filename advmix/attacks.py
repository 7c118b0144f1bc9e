"""Algorithm 2 (AdvMix), RandMix, l_inf PGD (adversarial training) and mixup, batched.

Pure torch: no store, no Beam. Classifiers are callables taking images in ``[0, 1]``
(``[B, 3, H, W]``) and returning logits; the generator is ``advmix.stylegan.Generator``,
whose synthesis gives images in ``[-1, 1]`` (mapped to ``[0, 1]`` by ``to_unit``).

**AdvMix** (Algorithm 2 of Gowal et al. 2020, batched). The coarse styles ``w[:, :k]`` of each
example (its content, ``z_par``) stay fixed; for each of ``restarts`` restarts the fine styles
start at ``map(z)[:, k:]`` for a fresh ``z`` and take ``steps`` projected ascent steps on the
cross-entropy of the classifier *at the current iterate* (the slide's ``x_tilde^(0)`` in
line 7 is a typo). Every iterate, the start included, is decoded with
``G.synthesis(noise_mode="const")`` (its coarse layers run once per batch:
``G.synthesis_coarse``) and checked with the 0-1 loss: the first misclassified mix
of an example is kept and that example stops ascending (and leaves the batch, which is where
early stopping saves compute); an example never misclassified keeps its highest-loss mix.
The bookkeeping is gathers and index writes, so on a GPU the only host sync of an iterate is
the count of examples that go on (none without early stop). On a CPU, when fewer than half go
on, their forward pass is redone instead of backpropagating through the whole batch.
The start of restart ``r`` is exactly the RandMix sample drawn from the same random stream,
so AdvMix fools a classifier at least wherever RandMix does.

**The valid set of fine styles** (``FineStyleSet``), chosen by ``kind``:

- ``"box"``: a per-coordinate box ``[lo, hi]`` fitted to the ``[q, 1 - q]``
  quantiles (``q = 0.01``) of the fine styles of ``map(z)`` over 10 000 draws, one box per
  fine layer. Ascent steps are sign steps of ``step_size * (hi - lo)``; projection is a
  clamp. Cheap, and every coordinate stays within what the mapping network produces, but
  corners of the box (all coordinates extreme at once) are not on the manifold.
- ``"ball"`` (default): an L2 ball around the restart's start, radius ``radius`` times the median
  distance between two independent fine styles. Normalised-gradient steps of
  ``step_size * radius``; projection rescales the offset. Stays near a real style.
- ``"z"``: optimise ``z`` itself (fine styles are ``map(z)[:, k:]``): always on the
  generator's manifold, no projection needed; steps of ``step_size * sqrt(z_dim)`` along the
  normalised gradient; costs a pass through the mapping network per step.

``docs/training.md`` has the measurement behind the default: on an AdvMix-trained classifier
the box fools most often (95% at K=5) but its styles end 1.45x farther from the nearest real
``map(z)`` style than real styles are; the ball fools nearly as often (91%) at 1.08x; z-space
fools less (75%, 1.11x). The ball is the best trade-off between strength and plausibility.

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
import torch.nn.functional as F
from torch import Tensor

from advmix.stylegan import Generator

Classifier = Callable[[Tensor], Tensor]
PROJECTIONS = ("box", "ball", "z")


def to_unit(images: Tensor) -> Tensor:
    """Generator output in [-1, 1] -> [0, 1] (clamped)."""
    return (images.clamp(-1, 1) + 1) / 2


def _randn(shape, generator: torch.Generator | None, device) -> Tensor:
    return torch.randn(shape, generator=generator).to(device)


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
# The valid set of fine styles


@dataclass
class FineStyleSet:
    """Where the fine styles ``w[:, k:]`` may go; see the module docstring for the kinds."""

    kind: str
    k: int
    lo: Tensor | None = None  # [L - k, D] (box)
    hi: Tensor | None = None
    radius: float = 0.0  # ball: absolute L2 radius

    @classmethod
    def fit(
        cls,
        G: Generator,
        k: int,
        kind: str = "ball",
        *,
        quantile: float = 0.01,
        radius: float = 0.5,
        samples: int = 10_000,
        seed: int = 0,
    ) -> FineStyleSet:
        if kind not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
        if not 1 <= k < G.num_ws:
            raise ValueError(f"k must be in 1..{G.num_ws - 1}, got {k}")
        fine = sample_fine(G, k, samples, torch.Generator().manual_seed(seed))
        if kind == "box":
            flat = fine.to(torch.float64)
            lo = torch.quantile(flat, quantile, dim=0).to(torch.float32)
            hi = torch.quantile(flat, 1 - quantile, dim=0).to(torch.float32)
            return cls(kind, k, lo=lo, hi=hi)
        if kind == "ball":
            half = len(fine) // 2
            d = (fine[:half] - fine[half : 2 * half]).flatten(1).norm(dim=1)
            return cls(kind, k, radius=float(radius * d.median()))
        return cls(kind, k)

    def to(self, device) -> FineStyleSet:
        lo = None if self.lo is None else self.lo.to(device)
        hi = None if self.hi is None else self.hi.to(device)
        return FineStyleSet(self.kind, self.k, lo, hi, self.radius)

    def project(self, fine: Tensor, start: Tensor) -> Tensor:
        if self.kind == "box":
            return torch.maximum(torch.minimum(fine, self.hi), self.lo)
        if self.kind == "ball":
            delta = fine - start
            norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            scale = (self.radius / norm).clamp(max=1.0)
            return start + delta * scale.view(-1, *([1] * (delta.ndim - 1)))
        return fine

    def contains(self, fine: Tensor, start: Tensor, tol: float = 1e-5) -> Tensor:
        """[B] bool: which styles lie in the set (``start`` is the restart's start)."""
        if self.kind == "box":
            inside = (fine >= self.lo - tol) & (fine <= self.hi + tol)
            return inside.flatten(1).all(dim=1)
        if self.kind == "ball":
            return (fine - start).flatten(1).norm(dim=1) <= self.radius * (1 + tol) + tol
        return torch.ones(len(fine), dtype=torch.bool, device=fine.device)

    def step(self, fine: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One ascent step on the fine styles (box and ball kinds)."""
        if self.kind == "box":
            return fine + step_size * (self.hi - self.lo) * grad.sign()
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
        return fine + step_size * self.radius * grad / norm


@torch.no_grad()
def sample_fine(G: Generator, k: int, n: int, generator: torch.Generator | None) -> Tensor:
    """Fine styles ``map(z)[:, k:]`` of ``n`` random ``z`` ([n, L - k, D])."""
    device = next(G.parameters()).device
    return G.mapping(_randn((n, G.z_dim), generator, device))[:, k:]


# ----------------------------------------------------------------------------------------------
# RandMix and AdvMix


def decode_mix(G: Generator, w: Tensor, fine: Tensor, k: int) -> Tensor:
    """Images in [0, 1] of coarse styles ``w[:, :k]`` and fine styles ``fine``."""
    return to_unit(G.synthesis(torch.cat([w[:, :k], fine], dim=1), noise_mode="const"))


@dataclass
class AttackResult:
    images: Tensor  # [B, 3, H, W] in [0, 1]: the kept mix of every example
    ws: Tensor  # [B, L, D]: its styles
    fooled: Tensor  # [B] bool: the kept mix is misclassified
    loss: Tensor  # [B] cross-entropy of the kept mix
    evaluations: int = 0  # mixes decoded and checked: 1 .. (K + 1) * restarts each


@torch.no_grad()
def randmix(
    G: Generator, w: Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """RandMix: (images in [0, 1], styles) with the fine styles of one random ``map(z)``."""
    fine = sample_fine(G, k, len(w), generator)
    ws = torch.cat([w[:, :k], fine], dim=1)
    return to_unit(G.synthesis(ws, noise_mode="const")), ws


def _rows(rows: Tensor, cur: Tensor, idx: Tensor, state, y_idx: Tensor, start: Tensor | None):
    """The per-example state of an ascent restricted to the examples ``rows``."""
    start = None if start is None else start[rows]
    return cur[rows], idx[rows], state.select(rows), y_idx[rows], start


def advmix(
    model: Classifier,
    G: Generator,
    w: Tensor,
    y: Tensor,
    k: int,
    style_set: FineStyleSet,
    *,
    steps: int = 5,
    restarts: int = 1,
    step_size: float = 0.25,
    early_stop: bool = True,
    generator: torch.Generator | None = None,
) -> AttackResult:
    """Algorithm 2, batched; see the module docstring. ``w`` [B, L, D], ``y`` [B]."""
    if steps < 0 or restarts < 1:
        raise ValueError("steps must be >= 0 and restarts >= 1")
    batch, device = len(w), w.device
    w = w.detach().to(torch.float32)
    best_fine = w[:, k:].clone()  # the kept mix's styles are cat([w[:, :k], best_fine])
    best_images = torch.zeros((batch, G.cfg.img_channels, G.cfg.resolution, G.cfg.resolution),
                              device=device)  # fmt: skip
    best_loss = torch.full((batch,), -math.inf, device=device)
    fooled = torch.zeros(batch, dtype=torch.bool, device=device)
    evaluations = 0

    def record(idx: Tensor, fine: Tensor, images: Tensor, wrong: Tensor, loss: Tensor) -> None:
        """Keep the first misclassified / highest-loss mix of the examples ``idx``."""
        # Gathers and index writes with ``idx`` only: no host sync on a GPU.
        was_fooled, kept_loss = fooled[idx], best_loss[idx]
        better = ~was_fooled & (wrong | (loss > kept_loss))
        best_loss[idx] = torch.where(better, loss.detach(), kept_loss)
        best_fine[idx] = torch.where(better[:, None, None], fine.detach(), best_fine[idx])
        best_images[idx] = torch.where(better[:, None, None, None], images.detach(),
                                       best_images[idx])  # fmt: skip
        fooled[idx] = was_fooled | wrong

    with torch.no_grad():  # the content of every mix: computed once, not per iterate
        coarse = G.synthesis_coarse(w[:, :k], noise_mode="const")

    def losses(cur: Tensor, state, y_idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(fine styles, images, logits, per-example cross-entropy) of the iterate ``cur``."""
        fine = G.mapping(cur)[:, k:] if style_set.kind == "z" else cur
        images = to_unit(G.synthesis_fine(state, fine))
        logits = model(images)
        return fine, images, logits, F.cross_entropy(logits, y_idx, reduction="none")

    with _EvalMode(model), torch.enable_grad():
        for _ in range(restarts):
            z = _randn((batch, G.z_dim), generator, device)  # drawn for all: same stream
            idx = torch.nonzero(~fooled).flatten()
            if len(idx) == 0:
                break
            z, state, y_idx = z[idx], coarse.select(idx), y[idx]
            if style_set.kind == "z":
                cur = z.clone().requires_grad_(True)
                start = None
            else:
                with torch.no_grad():
                    start = G.mapping(z)[:, k:]
                cur = start.clone().requires_grad_(True)
            for step in range(steps + 1):
                fine, images, logits, loss = losses(cur, state, y_idx)
                wrong = logits.argmax(dim=1) != y_idx
                evaluations += len(idx)
                record(idx, fine, images, wrong, loss)
                if step == steps:
                    break
                rows = None  # the examples that go on, when not all of them
                if early_stop:
                    rows = torch.nonzero(~wrong).flatten()  # the one host sync of an iterate
                    if len(rows) == 0:
                        break
                    rows = rows if len(rows) < len(idx) else None
                if rows is not None and 2 * len(rows) <= len(idx) and device.type == "cpu":
                    # Few go on: on a CPU (compute-bound) their forward pass again costs less
                    # than a backward pass through the whole batch (about two forwards). A GPU
                    # at these sizes is launch-bound: the extra pass would only add launches.
                    cur, idx, state, y_idx, start = _rows(rows, cur.detach(), idx, state, y_idx,
                                                          start)  # fmt: skip
                    cur.requires_grad_(True)
                    loss = losses(cur, state, y_idx)[-1]
                    rows = None
                (grad,) = torch.autograd.grad(loss.sum(), cur)
                with torch.no_grad():
                    if style_set.kind == "z":
                        norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                        nxt = cur + step_size * math.sqrt(G.z_dim) * grad / norm
                    else:
                        nxt = style_set.project(style_set.step(cur, grad, step_size), start)
                if rows is not None:
                    nxt, idx, state, y_idx, start = _rows(rows, nxt, idx, state, y_idx, start)
                cur = nxt.detach().requires_grad_(True)
    best_ws = torch.cat([w[:, :k], best_fine], dim=1)
    return AttackResult(best_images.detach(), best_ws, fooled, best_loss, evaluations)


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
            loss = F.cross_entropy(model(adv), y)
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


def mixup_loss(logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float) -> Tensor:
    return lam * F.cross_entropy(logits, y_a) + (1 - lam) * F.cross_entropy(logits, y_b)
