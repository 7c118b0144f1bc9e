"""Where AdvMix's fine styles may go: one class per valid set, each with start, step, project.

An AdvMix restart starts at the fine styles of a random ``map(z)`` and ascends the classifier's
loss; the projection keeps the iterate in a set of styles the generator can make. Each set is
fitted to ``style_samples`` draws of ``map(z)[:, k:]`` and works on its own iterate: the fine
styles themselves (box, ball) or ``z`` (z-space).

- ``Box``: a per-coordinate box ``[lo, hi]`` at the ``[q, 1 - q]`` quantiles of the draws
  (``q = box_quantile``). Sign steps of ``step_size * (hi - lo)``; projection is a clamp.
  Every coordinate stays within what the mapping network produces, but the box's corners
  (all coordinates extreme at once) are not on the manifold.
- ``Ball`` (default): an L2 ball around the restart's start, radius ``ball_radius`` times the
  median distance between two independent fine styles. Normalised-gradient steps of
  ``step_size * radius``; projection rescales the offset. Stays near a real style.
- ``ZSpace``: the iterate is ``z`` and the fine styles are ``map(z)[:, k:]``: always on the
  generator's manifold, no projection; normalised-gradient steps of ``step_size * sqrt(z_dim)``;
  costs a pass through the mapping network per step.

``docs/training.md`` has the measurement behind the default: on an AdvMix-trained classifier
the box fools most often (95% at K=5) but its styles end 1.45x farther from the nearest real
``map(z)`` style than real styles are; the ball fools nearly as often (91%) at 1.08x; z-space
fools less (75%, 1.11x).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advmix.stylegan import Generator

if TYPE_CHECKING:
    from advmix.attacks import AdvMixConfig


@torch.no_grad()
def sample_fine(G: Generator, k: int, n: int, generator: torch.Generator | None) -> Tensor:
    """Fine styles ``map(z)[:, k:]`` of ``n`` random ``z`` ([n, L - k, D])."""
    device = next(G.parameters()).device
    return G.mapping(torch.randn((n, G.z_dim), generator=generator).to(device))[:, k:]


def _row_norms(grad: Tensor) -> Tensor:
    """Each example's L2 norm, shaped to divide ``grad`` by."""
    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return norm.view(-1, *([1] * (grad.ndim - 1)))


class StyleSet:
    """A valid set of fine styles; subclasses define its iterate, step and projection."""

    name = ""

    def __init__(self, k: int) -> None:
        self.k = k

    @classmethod
    def fit(cls, G: Generator, k: int, cfg: AdvMixConfig, seed: int = 0) -> StyleSet:
        if not 1 <= k < G.num_ws:
            raise ValueError(f"k must be in 1..{G.num_ws - 1}, got {k}")
        return cls.from_samples(G, k, cfg, sample_fine(G, k, cfg.style_samples,
                                                      torch.Generator().manual_seed(seed)))  # fmt: skip

    @classmethod
    def from_samples(cls, G: Generator, k: int, cfg: AdvMixConfig, fine: Tensor) -> StyleSet:
        return cls(k)

    def start(self, G: Generator, z: Tensor) -> Tensor:
        """The restart's first iterate for latents ``z``."""
        with torch.no_grad():
            return G.mapping(z)[:, self.k :]

    def fine(self, G: Generator, cur: Tensor) -> Tensor:
        """The fine styles of the iterate ``cur``."""
        return cur

    def step(self, cur: Tensor, grad: Tensor, step_size: float) -> Tensor:
        raise NotImplementedError

    def project(self, cur: Tensor, start: Tensor) -> Tensor:
        """The nearest iterate in the set (``start``: the restart's first iterate)."""
        return cur

    def contains(self, fine: Tensor, start: Tensor, tol: float = 1e-5) -> Tensor:
        """[B] bool: which styles lie in the set."""
        return torch.ones(len(fine), dtype=torch.bool, device=fine.device)

    def to(self, device) -> StyleSet:
        return self


class Box(StyleSet):
    name = "box"

    def __init__(self, k: int, lo: Tensor, hi: Tensor) -> None:
        super().__init__(k)
        self.lo, self.hi = lo, hi  # [L - k, D]

    @classmethod
    def from_samples(cls, G, k, cfg, fine) -> Box:
        flat = fine.to(torch.float64)
        lo = torch.quantile(flat, cfg.box_quantile, dim=0).to(torch.float32)
        hi = torch.quantile(flat, 1 - cfg.box_quantile, dim=0).to(torch.float32)
        return cls(k, lo, hi)

    def step(self, cur, grad, step_size):
        return cur + step_size * (self.hi - self.lo) * grad.sign()

    def project(self, cur, start):
        return torch.maximum(torch.minimum(cur, self.hi), self.lo)

    def contains(self, fine, start, tol=1e-5):
        inside = (fine >= self.lo - tol) & (fine <= self.hi + tol)
        return inside.flatten(1).all(dim=1)

    def to(self, device) -> Box:
        return Box(self.k, self.lo.to(device), self.hi.to(device))


class Ball(StyleSet):
    name = "ball"

    def __init__(self, k: int, radius: float) -> None:
        super().__init__(k)
        self.radius = radius  # absolute L2 radius

    @classmethod
    def from_samples(cls, G, k, cfg, fine) -> Ball:
        half = len(fine) // 2
        distances = (fine[:half] - fine[half : 2 * half]).flatten(1).norm(dim=1)
        return cls(k, float(cfg.ball_radius * distances.median()))

    def step(self, cur, grad, step_size):
        return cur + step_size * self.radius * grad / _row_norms(grad)

    def project(self, cur, start):
        delta = cur - start
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (self.radius / norm).clamp(max=1.0)
        return start + delta * scale.view(-1, *([1] * (delta.ndim - 1)))

    def contains(self, fine, start, tol=1e-5):
        return (fine - start).flatten(1).norm(dim=1) <= self.radius * (1 + tol) + tol


class ZSpace(StyleSet):
    name = "z"

    def __init__(self, k: int, z_dim: int) -> None:
        super().__init__(k)
        self.z_dim = z_dim

    @classmethod
    def fit(cls, G, k, cfg, seed=0) -> ZSpace:
        if not 1 <= k < G.num_ws:
            raise ValueError(f"k must be in 1..{G.num_ws - 1}, got {k}")
        return cls(k, G.z_dim)  # nothing to fit: the mapping network is the set

    def start(self, G, z):
        return z.clone()

    def fine(self, G, cur):
        return G.mapping(cur)[:, self.k :]

    def step(self, cur, grad, step_size):
        return cur + step_size * math.sqrt(self.z_dim) * grad / _row_norms(grad)


PROJECTIONS: dict[str, type[StyleSet]] = {cls.name: cls for cls in (Box, Ball, ZSpace)}


def fit_style_set(G: Generator, k: int, cfg: AdvMixConfig, seed: int = 0) -> StyleSet:
    """The valid set ``cfg.projection`` fitted to ``G`` at split ``k``."""
    return PROJECTIONS[cfg.projection].fit(G, k, cfg, seed)
