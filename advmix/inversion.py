"""Algorithm 1 of the paper, batched: invert images into W+ styles whose coarse part carries content.

For each image ``x``: start from the mean of M mapped latents, then take Adam steps on
    L_rec = a0 * ||dec(w+) - x||^2 + sum_i a_i * ||vgg_i(dec(w+)) - vgg_i(x)||^2
    L_mix = sum_i b_i * ||vgg_i(dec(w+_coarse, map(z)_fine)) - vgg_i(x)||^2,  z fresh each step.
The mixing loss is what pushes content into the coarse styles: the fine styles are replaced by
random ones and the image must still look like ``x``. The pixel term is a mean over elements.
Feature maps are unit-normalised over channels before the squared distance (as LPIPS does,
without its learned weights; summed over channels, averaged over positions): on raw
activations conv3_2's errors are ~100x the pixel term's and the fit follows them into poor
minima (measured on the shipped generator, 16 real test images, 100 steps: 17.7 dB PSNR raw,
24.3 dB normalised). ``normalize_features=False`` gives the raw variant.

Each image is optimised independently of its batch-mates: losses are summed over the batch
(so one image's gradient never involves another's), Adam's moments are per element, and the
random z of the mixing loss come from a per-image seed. Batching only amortises the networks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from advmix.perceptual import VGGFeatures
from advmix.stylegan import Generator, resolve_k

PAPER_BETAS = (0.9, 0.999)
# Adam on W+ from the mean: 0.05/0.1/0.2 gave 21.8/22.6/23.0 dB (50 steps, 16 images)
PAPER_LR = 0.2
# From an encoder's prediction Adam's first steps of the mean start's 0.2 per coordinate undo
# the start (docs/encoding.md: 22.7 dB at 0 steps, 19.7 dB after 5). Smaller steps with short
# moment memories refine it furthest in a few steps (docs/encoding.md, "The refinement's
# optimiser"). The encode job's defaults from an encoder.
WARM_START_LR = 0.05
WARM_START_BETAS = (0.5, 0.9)
# Adam's default (lr, betas) by where the walk starts (InversionConfig.init).
START_ADAM = {"mean": (PAPER_LR, PAPER_BETAS), "encoder": (WARM_START_LR, WARM_START_BETAS)}


@dataclass
class InversionConfig:
    steps: int = 100
    lr: float = PAPER_LR
    lr_rampdown: float = 0.25  # cosine ramp-down over the last fraction of steps (NVlabs projector)
    w_avg_samples: int = 1000  # M in Algorithm 1
    alpha_pixel: float = 1.0  # a0
    alpha_features: Sequence[float] = field(default_factory=lambda: (1.0, 1.0, 1.0))  # a_i
    beta_mix: Sequence[float] = field(default_factory=lambda: (0.2, 0.2, 0.2))  # b_i (paper 1/5)
    k: int | None = None  # coarse/fine split; None takes the generator's
    seed: int = 0
    normalize_features: bool = True  # LPIPS-style channel normalisation (module docstring)
    # Where the optimisation starts: "mean" (the paper: the mean of M mapped latents) or
    # "encoder" (an amortised encoder's prediction per image, advmix/encoder.py).
    init: str = "mean"
    # Adam's (beta1, beta2). The paper's and NVlabs' (0.9, 0.999) suit a long walk from the
    # mean; a short refinement of an encoder's start goes further with shorter memories
    # (docs/encoding.md), which the encode job uses from an encoder.
    betas: tuple[float, float] = PAPER_BETAS
    # The mixing loss on the last ``mix_steps`` steps only; None: on every step (Algorithm 1).
    # A step without it decodes and features one image instead of two, at under half the
    # time, and from an encoder's start a short walk keeps its mixes' class without it
    # (docs/encoding.md, "Steps without the mixing loss").
    mix_steps: int | None = None

    def to_dict(self) -> dict:
        data = {
            **asdict(self),
            "alpha_features": list(self.alpha_features),
            "beta_mix": list(self.beta_mix),
            "betas": list(self.betas),
        }
        # As stores written before these settings existed, when they hold the paper's values.
        if tuple(self.betas) == PAPER_BETAS:
            del data["betas"]
        if self.mix_steps is None:
            del data["mix_steps"]
        return data

    def mixes_at(self, step: int) -> bool:
        """Whether step ``step`` (0-based) of ``steps`` includes the mixing loss."""
        return self.mix_steps is None or step >= self.steps - self.mix_steps


@dataclass
class InversionResult:
    ws: torch.Tensor  # [B, L, D] float32 on CPU
    rec_mse: torch.Tensor  # [B] pixel MSE of the final reconstruction in [0, 1] units
    rec_psnr: torch.Tensor  # [B] dB
    loss: torch.Tensor  # [B] final L_rec + L_mix


def mean_style(G: Generator, samples: int, seed: int) -> torch.Tensor:
    """Average mapped latent [L, D] over ``samples`` draws (Algorithm 1, line 1)."""
    device = next(G.parameters()).device
    z = torch.randn(samples, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.mapping(z.to(device)).mean(dim=0)


def mixing_noise(seeds: Sequence[int], steps: int, z_dim: int) -> torch.Tensor:
    """z [B, steps, z_dim] drawn per image from its own seed, so batching cannot change it."""
    return torch.stack(
        [torch.randn(steps, z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    )


def _per_image_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().flatten(1).mean(dim=1)


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + 1e-8)


def _distance(f: torch.Tensor, t: torch.Tensor, normalize: bool) -> torch.Tensor:
    if normalize:
        return (_unit(f) - _unit(t)).square().sum(dim=1).flatten(1).mean(dim=1)
    return _per_image_mse(f, t)


def _feature_loss(feats, targets, weights, normalize: bool) -> torch.Tensor:
    """sum_i w_i * distance(feats_i, targets_i) per image [B]."""
    pairs = zip(weights, feats, targets, strict=True)
    return sum(w * _distance(f, t, normalize) for w, f, t in pairs)


def _learning_rate(cfg: InversionConfig, step: int) -> float:
    t = step / max(cfg.steps, 1)
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown) if cfg.lr_rampdown > 0 else 1.0
    return cfg.lr * 0.5 * (1.0 - math.cos(math.pi * ramp)) if ramp < 1.0 else cfg.lr


def invert(
    G: Generator,
    features: VGGFeatures,
    images: torch.Tensor,
    cfg: InversionConfig,
    seeds: Sequence[int] | None = None,
    w_start: torch.Tensor | None = None,
) -> InversionResult:
    """Invert ``images`` [B, 3, H, W] in [-1, 1]; ``seeds`` (one per image) fix the mixing z.
    ``w_start``: the starting styles, [L, D] for every image or [B, L, D] one per image
    (default: the mean style)."""
    device = next(G.parameters()).device
    batch = images.shape[0]
    k = resolve_k(G, cfg.k)
    seeds = list(range(batch)) if seeds is None else list(seeds)
    target = images.to(device, torch.float32)
    with torch.no_grad():
        target_feats = features(target)
    if w_start is None:
        w_start = mean_style(G, cfg.w_avg_samples, cfg.seed)
    ws = w_start.to(device).expand(batch, -1, -1).clone().requires_grad_(True)
    # One z per step plus one for the reported final loss.
    z_mix = mixing_noise([cfg.seed * 1_000_003 + s for s in seeds], cfg.steps + 1, G.cfg.z_dim)
    optimiser = torch.optim.Adam([ws], lr=cfg.lr, betas=tuple(cfg.betas))

    with torch.enable_grad():
        for step in range(cfg.steps):
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(cfg, step)
            z = z_mix[:, step].to(device) if cfg.mixes_at(step) else None
            loss = _objective(G, features, ws, target, target_feats, z, k, cfg)
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimiser.step()

    with torch.no_grad():
        final = ws.detach()
        recon = G.synthesis(final, noise_mode="const")
        mse = _per_image_mse(recon.clamp(-1, 1), target) / 4.0  # [-1,1] -> [0,1] units
        last = _objective(
            G, features, final, target, target_feats, z_mix[:, cfg.steps].to(device), k, cfg
        )
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))
    return InversionResult(final.cpu(), mse.cpu(), psnr.cpu(), last.cpu())


def _objective(G, features, ws, target, target_feats, z, k, cfg) -> torch.Tensor:
    """Per-image L_rec + L_mix [B] (Algorithm 1, lines 3-8); L_rec alone when ``z`` is None."""
    recon = G.synthesis(ws, noise_mode="const")
    rec = cfg.alpha_pixel * _per_image_mse(recon, target)
    rec = rec + _feature_loss(
        features(recon), target_feats, cfg.alpha_features, cfg.normalize_features
    )
    if z is None:
        return rec
    with torch.no_grad():
        random_styles = G.mapping(z)
    mixed = G.synthesis(G.mix(ws, random_styles, k), noise_mode="const")
    return rec + _feature_loss(features(mixed), target_feats, cfg.beta_mix, cfg.normalize_features)
