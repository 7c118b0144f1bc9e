"""Building blocks of the generator and the discriminator, one class per layer kind, with
explicit shapes: equalised-learning-rate linear layers, the StyleGAN2 modulated convolution,
FIR resampling, and the synthesis layers (a styled 3x3 conv, a styled toRGB)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from advmix.stylegan import GeneratorConfig

LRELU_GAIN = math.sqrt(2.0)


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def demodulation(weight: Tensor, styles: Tensor) -> Tensor:
    """[B, O] coefficients that give every output channel of the modulated weight unit norm."""
    # sum_{i,k} (w[o,i,k] * s[b,i])^2 = sum_i s[b,i]^2 * (sum_k w[o,i,k]^2)
    wsq = weight.square().sum(dim=[2, 3])  # [O, I]
    return (styles.square() @ wsq.t() + 1e-8).rsqrt()


def modulated_conv2d(
    x: Tensor,  # [B, I, H, W]
    weight: Tensor,  # [O, I, kh, kw]
    styles: Tensor,  # [B, I]
    demodulate: bool = True,
    padding: int = 0,
    grouped: bool = False,
    up_filter: Tensor | None = None,  # FIR [4, 4]: 2x upsampling the NVlabs way (below)
) -> Tensor:
    """StyleGAN2 modulated convolution; non-grouped by default (same result as grouped).

    With ``up_filter`` the output has twice the resolution, as NVlabs' ``conv2d_resample``
    with ``up=2`` computes it: a transposed convolution of stride 2 (weights not flipped),
    then the FIR filter with padding 1 and gain 4."""
    batch, in_ch, height, width = x.shape
    out_ch, _, kh, kw = weight.shape
    dcoefs = demodulation(weight, styles) if demodulate else None
    if up_filter is not None:
        x = F.conv_transpose2d(x * styles[:, :, None, None], weight.transpose(0, 1), stride=2)
        x = fir_filter(x, up_filter, (1, 1), gain=4.0)
        return x if dcoefs is None else x * dcoefs[:, :, None, None]
    if not grouped:
        x = F.conv2d(x * styles[:, :, None, None], weight, padding=padding)
        return x if dcoefs is None else x * dcoefs[:, :, None, None]
    w = weight[None] * styles[:, None, :, None, None]  # [B, O, I, kh, kw]
    if dcoefs is not None:
        w = w * dcoefs[:, :, None, None, None]
    x = x.reshape(1, batch * in_ch, height, width)
    x = F.conv2d(x, w.reshape(batch * out_ch, in_ch, kh, kw), padding=padding, groups=batch)
    return x.reshape(batch, out_ch, x.shape[2], x.shape[3])


def upsample2x(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def fir_kernel(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """The separable 2D FIR filter of ``taps`` (outer product), normalised to sum 1."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def fir_filter(x: Tensor, f: Tensor, pad: tuple[int, int], gain: float) -> Tensor:
    """upfirdn2d without resampling: pad (before, after) on both axes, then a true (flipped)
    depthwise convolution with ``f * gain``."""
    channels = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = (f * gain).flip([0, 1]).to(x.dtype)[None, None].expand(channels, 1, -1, -1)
    return F.conv2d(x, weight, groups=channels)


def fir_upsample2x(x: Tensor, f: Tensor) -> Tensor:
    """upfirdn2d with ``up=2``: zeros between the samples, padding (2, 1), gain 4."""
    batch, channels, height, width = x.shape
    spread = x.new_zeros(batch, channels, height, 2, width, 2)
    spread[:, :, :, 0, :, 0] = x
    spread = spread.reshape(batch, channels, 2 * height, 2 * width)
    return fir_filter(spread, f, (2, 1), gain=4.0)


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate (weights stored as N(0, 1/lr_multiplier))."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, w, b)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * LRELU_GAIN
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + lrelu (+ clamp)."""

    def __init__(
        self, cfg: GeneratorConfig, in_channels: int, out_channels: int, resolution: int, up: bool
    ):
        super().__init__()
        self.resolution, self.up, self.grouped = resolution, up, cfg.grouped
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(cfg.w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.fir = up and cfg.resample == "fir"
        if self.fir:  # derived, not a weight: kept out of checkpoints and fingerprints
            self.register_buffer("resample_filter", fir_kernel(), persistent=False)

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const") -> Tensor:
        styles = self.affine(w)  # [B, I]
        if self.fir:
            x = modulated_conv2d(x, self.weight, styles, demodulate=False,
                                 up_filter=self.resample_filter)  # fmt: skip
        else:
            if self.up:
                x = upsample2x(x)
            x = modulated_conv2d(x, self.weight, styles, demodulate=False, padding=1,
                                 grouped=self.grouped)  # fmt: skip
        # Demodulation, noise, bias and the activation gain as one fused multiply-add
        # (lrelu(v) * g == lrelu(v * g) for g > 0), then the activation in place: the
        # elementwise passes over [B, O, H, W] dominate these small layers on a CPU.
        scale = demodulation(self.weight, styles)[:, :, None, None] * LRELU_GAIN
        x = torch.addcmul(self.offset(x, noise_mode), x, scale)
        x = F.leaky_relu_(x, 0.2)
        # not in place: the activation's backward needs its output as it was
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)

    def offset(self, x: Tensor, noise_mode: str) -> Tensor:
        """(noise * strength + bias) * gain: [O, H, W], or [B, O, H, W] for random noise."""
        bias = self.bias[:, None, None]
        if noise_mode == "random":
            res = self.resolution
            noise = torch.randn([x.shape[0], 1, res, res], device=x.device, dtype=x.dtype)
            return (noise * self.noise_strength + bias) * LRELU_GAIN
        if noise_mode == "const":
            return (self.noise_const * self.noise_strength + bias) * LRELU_GAIN
        return bias * LRELU_GAIN


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation: features -> image channels."""

    def __init__(self, cfg: GeneratorConfig, in_channels: int):
        super().__init__()
        self.grouped, self.conv_clamp = cfg.grouped, cfg.conv_clamp
        self.affine = FullyConnectedLayer(cfg.w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([cfg.img_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([cfg.img_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, grouped=self.grouped)
        x = x + self.bias[None, :, None, None]
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)
