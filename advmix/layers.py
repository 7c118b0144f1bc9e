"""Building blocks shared by the generator and the discriminator: equalised-learning-rate
linear layers and the StyleGAN2 modulated convolution, with explicit shapes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
