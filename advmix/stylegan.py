"""StyleGAN2 generator: mapping z -> w, synthesis from per-layer styles ws [B, num_ws, w_dim].

Follows NVlabs stylegan2-ada ``training/networks.py`` (one class per layer kind, equalised
learning rate, modulated convolution with demodulation, per-layer noise, constant input, skip
toRGB outputs); the project's own generators simplify it for small images, and an imported
generator (``advmix.importers``) selects NVlabs' exact layers:

- modulated convolution is the *non-grouped* formulation (scale the input channels by the
  style, one convolution shared by the batch, scale the output channels by the demodulation
  coefficients); ``GeneratorConfig.grouped=True`` selects the grouped form for comparison
  (``benchmarks/bench_generator.py``). Both compute the same function.
- upsampling is bilinear by default (equivalent to the [1, 3, 3, 1] FIR filter away from the
  borders). ``resample="fir"`` is NVlabs' resampling, exact at the borders too: each block's
  first conv is a stride-2 transposed convolution followed by the FIR filter, and the skip
  image is FIR-upsampled.
- ``conv_clamp`` (None by default) clamps the output of every synthesis and toRGB layer to
  [-conv_clamp, conv_clamp], as NVlabs does when a config sets it (its configs do, to keep
  fp16 activations in range); only imported generators set it.
- there are no fp16 layers: the layers an NVlabs generator runs in fp16 run in fp32 here
  (its ``force_fp32=True``), so an imported generator computes the same on CPUs and GPUs.

Styles are indexed like NVlabs: a 32x32 generator has ``num_ws = 8`` (4x4 conv, then per block
conv0, conv1 and toRGB, where a block's toRGB shares its index with the next block's conv0).
``mix(ws_a, ws_b, k)`` takes the coarse styles ``0..k-1`` from ``a`` and the fine ones from ``b``.
Every image depends only on its own styles (no batch statistics), and synthesis is
differentiable with respect to ``ws`` for inversion and attacks.

``synthesis_coarse(ws[:, :k])`` runs every layer that reads only coarse styles once and
``synthesis_fine(state, fine)`` finishes the image from there: AdvMix changes only the fine
styles of an example, so its ascent steps skip the coarse layers (about half the multiply-adds
of the shipped 32x32 generator at k = 4). Together they compute exactly ``synthesis(ws)``.

Checkpoint files (save, load, fingerprint) are ``advmix.checkpoints``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from advmix.errors import AdvmixError
from advmix.layers import (
    FullyConnectedLayer,
    SynthesisLayer,
    ToRGBLayer,
    fir_kernel,
    fir_upsample2x,
    normalize_2nd_moment,
    upsample2x,
)

NOISE_MODES = ("const", "random", "none")
RESAMPLING = ("bilinear", "fir")
_LATER_OPTIONS = {"resample": "bilinear", "conv_clamp": None, "widths": None}


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class GeneratorConfig:
    """Architecture of a generator; JSON-serialisable and stored in every checkpoint."""

    z_dim: int = 128
    w_dim: int = 128
    resolution: int = 32  # any power of two 8..1024
    img_channels: int = 3
    mapping_layers: int = 4
    channel_base: int = 2048  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 128
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    grouped: bool = False  # grouped modulated conv (benchmark comparison only)
    k: int | None = None  # coarse/fine split chosen by `advmix gan evaluate`
    # NVlabs' exact architecture (imported generators): "fir" resamples with the [1, 3, 3, 1]
    # filter (a transposed conv + FIR in each block's first conv, FIR upsampling of the skip
    # image) instead of bilinear upsampling; conv_clamp clamps every layer's output; widths
    # gives each block's channels when they follow no channel_base formula (rosinality).
    resample: str = "bilinear"
    conv_clamp: float | None = None
    widths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        res = self.resolution
        if not (isinstance(res, int) and 8 <= res <= 1024 and res & (res - 1) == 0):
            raise ValueError(f"resolution must be a power of two in 8..1024, got {res}")
        for name in ("z_dim", "w_dim", "img_channels", "mapping_layers", "channel_base"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.k is not None and not 1 <= self.k < self.num_ws:
            raise ValueError(f"k must be in 1..{self.num_ws - 1}, got {self.k}")
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {RESAMPLING}, got {self.resample!r}")
        if self.widths is not None:
            self.widths = tuple(int(c) for c in self.widths)
            if len(self.widths) != len(self.block_resolutions) or min(self.widths) < 1:
                raise ValueError(f"widths must give {len(self.block_resolutions)} channel counts "
                                 f"(4..{res} px), got {list(self.widths)}")  # fmt: skip

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    def channels(self, res: int) -> int:
        if self.widths is not None:
            return self.widths[int(math.log2(res)) - 2]
        return max(1, min(self.channel_base // res, self.channel_max))

    @property
    def num_ws(self) -> int:
        return 2 * (len(self.block_resolutions) - 1) + 2

    def to_dict(self) -> dict:
        # The architecture options left at their defaults are not written: configs (and so
        # fingerprints) of generators made before the options existed stay what they were.
        data = dataclasses.asdict(self)
        for name, default in _LATER_OPTIONS.items():
            if data[name] == default:
                del data[name]
        if data.get("widths") is not None:
            data["widths"] = list(data["widths"])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> GeneratorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generator config keys {unknown}")
        return cls(**data)


# ----------------------------------------------------------------------------------------------
# Layers


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> w [B, num_ws, w_dim] (broadcast), tracking the average w."""

    def __init__(self, cfg: GeneratorConfig, num_ws: int):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = cfg.z_dim, cfg.w_dim, num_ws
        self.w_avg_beta = cfg.w_avg_beta
        features = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(a, b, activation="lrelu", lr_multiplier=cfg.mapping_lr_multiplier)
            for a, b in zip(features[:-1], features[1:], strict=True)
        )
        self.register_buffer("w_avg", torch.zeros([cfg.w_dim]))

    def forward(
        self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {list(z.shape)}")
        x = normalize_2nd_moment(z.to(torch.float32))
        for layer in self.layers:
            x = layer(x)
        if self.training:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:  # toward the average w, on the first ``cutoff`` rows (or all)
            rows = slice(None) if truncation_cutoff is None else slice(0, truncation_cutoff)
            x[:, rows] = self.w_avg.lerp(x[:, rows], truncation_psi)
        return x


class SynthesisBlock(nn.Module):
    """One resolution: (const input | upsampling conv0), conv1, toRGB added to the skip image."""

    def __init__(self, cfg: GeneratorConfig, in_channels: int, out_channels: int, res: int):
        super().__init__()
        self.resolution = res
        self.is_first = in_channels == 0
        if self.is_first:
            self.const = nn.Parameter(torch.randn([out_channels, res, res]))
        else:
            self.conv0 = SynthesisLayer(cfg, in_channels, out_channels, res, up=True)
        self.conv1 = SynthesisLayer(cfg, out_channels, out_channels, res, up=False)
        self.torgb = ToRGBLayer(cfg, out_channels)
        self.num_conv = 1 if self.is_first else 2
        self.num_torgb = 1
        self.fir = cfg.resample == "fir" and not self.is_first
        if self.fir:
            self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def layers(self) -> list[SynthesisLayer]:
        """The block's convolutions in order; layer ``j`` reads the block's style ``j``."""
        return [self.conv1] if self.is_first else [self.conv0, self.conv1]

    def convs(self, x: Tensor | None, ws: Tensor, noise_mode: str, start: int, stop: int) -> Tensor:
        """Run convolutions ``start..stop-1`` on ``x`` (ws: the block's styles [B, >=stop, D])."""
        if self.is_first and start == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        for j, layer in enumerate(self.layers()[start:stop], start):
            x = layer(x, ws[:, j], noise_mode)
        return x

    def forward(
        self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str, convs_done: int = 0
    ) -> tuple[Tensor, Tensor]:
        # ws: [B, num_conv + num_torgb, w_dim]; convs_done: x is the output of that many convs
        x = self.convs(x, ws, noise_mode, convs_done, self.num_conv)
        y = self.torgb(x, ws[:, self.num_conv])
        if img is not None:
            img = fir_upsample2x(img, self.resample_filter) if self.fir else upsample2x(img)
        return x, y if img is None else img + y


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> images [B, C, R, R] (trained range [-1, 1])."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        in_channels = 0
        for res in cfg.block_resolutions:
            out_channels = cfg.channels(res)
            block = SynthesisBlock(cfg, in_channels, out_channels, res)
            self.blocks.append(block)
            self.num_ws += block.num_conv
            in_channels = out_channels
        self.num_ws += 1  # the last block's toRGB
        assert self.num_ws == cfg.num_ws

    def forward(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        return self.fine(self.coarse(ws[:, :0], noise_mode), ws)

    def coarse(self, ws_coarse: Tensor, noise_mode: str = "const") -> CoarseActivations:
        """Run every layer whose style index is below k = ``ws_coarse.shape[1]``."""
        k, x, img, w_idx = ws_coarse.shape[1], None, None, 0
        for i, block in enumerate(self.blocks):
            n = block.num_conv + block.num_torgb
            if w_idx + n > k:  # a layer of this block reads a fine style: stop at the first one
                done = min(block.num_conv, k - w_idx)
                x = block.convs(x, ws_coarse[:, w_idx:], noise_mode, 0, done)
                return CoarseActivations(ws_coarse, x, img, i, w_idx, done, noise_mode)
            x, img = block(x, img, ws_coarse[:, w_idx : w_idx + n], noise_mode)
            w_idx += block.num_conv
        raise ValueError(f"k must be below num_ws = {self.num_ws}, got {k}")

    def fine(self, state: CoarseActivations, ws_fine: Tensor) -> Tensor:
        """Finish the images of ``state`` with the fine styles ``ws_fine`` [B, num_ws - k, D];
        only layers that read ``ws_fine`` run, so gradients flow to nothing else."""
        ws = torch.cat([state.ws_coarse.to(ws_fine.dtype), ws_fine], dim=1)
        x, img, w_idx = state.x, state.img, state.w_idx
        for i, block in enumerate(self.blocks[state.block :]):
            n = block.num_conv + block.num_torgb
            done = state.convs_done if i == 0 else 0
            x, img = block(x, img, ws[:, w_idx : w_idx + n], state.noise_mode, done)
            w_idx += block.num_conv
        return img


@dataclass
class CoarseActivations:
    """Synthesis paused before the first layer that reads a fine style (``synthesis_coarse``)."""

    ws_coarse: Tensor  # [B, k, w_dim]
    x: Tensor | None  # features of block ``block`` after its first ``convs_done`` convolutions
    img: Tensor | None  # skip image of the blocks before ``block``
    block: int  # index of the block to continue with
    w_idx: int  # style index of that block's first layer
    convs_done: int  # 0 .. that block's num_conv (all done: only its toRGB reads a fine style)
    noise_mode: str

    def select(self, idx: Tensor) -> CoarseActivations:
        """The same state for the examples ``idx`` (indices or a boolean mask) only."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return dataclasses.replace(self, ws_coarse=self.ws_coarse[idx], x=pick(self.x),
                                   img=pick(self.img))  # fmt: skip


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z -> ws), ``synthesis`` (ws -> images), ``mix``."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else GeneratorConfig()
        self.z_dim, self.w_dim = self.cfg.z_dim, self.cfg.w_dim
        self.synthesis_net = SynthesisNetwork(self.cfg)
        self.num_ws = self.synthesis_net.num_ws
        self.mapping_net = MappingNetwork(self.cfg, self.num_ws)

    @property
    def w_avg(self) -> Tensor:
        return self.mapping_net.w_avg

    def mapping(
        self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> Tensor:
        """z [B, z_dim] -> ws [B, num_ws, w_dim], truncated toward ``w_avg`` by ``psi`` on the
        first ``truncation_cutoff`` styles (all when None); updates ``w_avg`` only in
        training mode."""
        return self.mapping_net(z, truncation_psi, truncation_cutoff)

    def synthesis(self, ws: Tensor, noise_mode: str = "const") -> Tensor:
        """ws [B, num_ws, w_dim] -> images [B, C, R, R] in [-1, 1] (not clamped)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        return self.synthesis_net(ws.to(torch.float32), noise_mode=noise_mode)

    def synthesis_coarse(self, ws_coarse: Tensor, noise_mode: str = "const") -> CoarseActivations:
        """The layers that read only ``ws_coarse`` [B, k, w_dim] (1 <= k < num_ws), run once."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        k = ws_coarse.shape[1] if ws_coarse.ndim == 3 else -1
        if not 1 <= k < self.num_ws or ws_coarse.shape[2] != self.w_dim:
            raise ValueError(f"ws_coarse must be [B, k, {self.w_dim}] with 1 <= k < "
                             f"{self.num_ws}, got {list(ws_coarse.shape)}")  # fmt: skip
        return self.synthesis_net.coarse(ws_coarse.to(torch.float32), noise_mode)

    def synthesis_fine(self, state: CoarseActivations, ws_fine: Tensor) -> Tensor:
        """Images in [-1, 1] of ``state``'s coarse styles and ``ws_fine`` [B, num_ws - k, D];
        equal to ``synthesis(cat([ws_coarse, ws_fine], 1))``."""
        k = state.ws_coarse.shape[1]
        expected = (len(state.ws_coarse), self.num_ws - k, self.w_dim)
        if tuple(ws_fine.shape) != expected:
            raise ValueError(f"ws_fine must be {list(expected)}, got {list(ws_fine.shape)}")
        return self.synthesis_net.fine(state, ws_fine.to(torch.float32))

    @staticmethod
    def mix(ws_a: Tensor, ws_b: Tensor, k: int) -> Tensor:
        """Coarse styles 0..k-1 from ``ws_a``, fine styles k.. from ``ws_b``."""
        if ws_a.shape != ws_b.shape:
            raise ValueError(f"ws shapes differ: {list(ws_a.shape)} vs {list(ws_b.shape)}")
        if not 0 <= k <= ws_a.shape[1]:
            raise ValueError(f"k must be in 0..{ws_a.shape[1]}, got {k}")
        return torch.cat([ws_a[:, :k], ws_b[:, k:]], dim=1)

    def forward(self, z: Tensor, truncation_psi: float = 1.0, noise_mode: str = "const") -> Tensor:
        return self.synthesis(self.mapping(z, truncation_psi=truncation_psi), noise_mode)


def seeded_z(n: int, z_dim: int, seed: int) -> Tensor:
    """Reproducible latents [n, z_dim] independent of the global RNG and the device."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((n, z_dim)).astype(np.float32))


def resolve_k(G: Generator, *choices: int | None) -> int:
    """The coarse/fine split: the first of ``choices`` that is set (a flag, a store's k), else
    the generator's own; one line naming the valid range when it is missing or out of it."""
    k = next((c for c in (*choices, G.cfg.k) if c is not None), None)
    if k is None:
        raise AdvmixError(
            f"no coarse/fine split k is recorded for this generator: pass --k (1..{G.num_ws - 1})"
        )
    if not 1 <= k < G.num_ws:
        raise AdvmixError(f"coarse/fine split k={k} must be in 1..{G.num_ws - 1}")
    return int(k)


def to_unit(images: Tensor) -> Tensor:
    """Generator output in [-1, 1] -> [0, 1] (clamped)."""
    return (images.clamp(-1, 1) + 1) / 2


def decode(G: Generator, ws: Tensor, batch: int = 250) -> Tensor:
    """Images in [0, 1] of styles ``ws`` [N, L, D], ``batch`` at a time."""
    return torch.cat([to_unit(G.synthesis(ws[i : i + batch])) for i in range(0, len(ws), batch)])
