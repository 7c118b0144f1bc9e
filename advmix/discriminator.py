"""StyleGAN2 residual discriminator with minibatch standard deviation (NVlabs ``resnet``).

Only used to train generators (``training/gan.py``). Equalised learning rate like the
generator, average-pool downsampling before the strided convolution's 3x3 conv (4x cheaper
than convolving at full resolution and then pooling).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmix.layers import LRELU_GAIN, FullyConnectedLayer


@dataclass
class DiscriminatorConfig:
    resolution: int = 32
    img_channels: int = 3
    channel_base: int = 1024  # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 128
    mbstd_group_size: int = 4
    mbstd_channels: int = 1

    def channels(self, res: int) -> int:
        return max(1, min(self.channel_base // res, self.channel_max))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> DiscriminatorConfig:
        return cls(**data)


class Conv2dLayer(nn.Module):
    """Conv with equalised learning rate, optional 2x average-pool downsampling first."""

    def __init__(
        self, in_channels, out_channels, kernel_size, bias=True, activation="lrelu", down=False
    ):
        super().__init__()
        self.activation, self.down = activation, down
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * (LRELU_GAIN * gain)
        elif gain != 1:
            x = x * gain
        return x


class DiscriminatorBlock(nn.Module):
    """Residual block: conv0, downsampling conv1, 1x1 skip; halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3)
        self.conv1 = Conv2dLayer(in_channels, out_channels, 3, down=True)
        self.skip = Conv2dLayer(
            in_channels, out_channels, 1, bias=False, activation="linear", down=True
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return x + y


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        G = next(g for g in range(min(self.group_size, N), 0, -1) if N % g == 0)
        F_ = self.num_channels
        c = C // F_
        y = x.reshape(G, -1, F_, c, H, W)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])  # [N/G, F]
        y = y.reshape(-1, F_, 1, 1).repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """images [B, C, R, R] in [-1, 1] -> logits [B, 1]."""

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else DiscriminatorConfig()
        top = cfg.resolution
        self.fromrgb = Conv2dLayer(cfg.img_channels, cfg.channels(top), 1)
        resolutions = [2**i for i in range(int(math.log2(top)), 2, -1)]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(cfg.channels(r), cfg.channels(r // 2)) for r in resolutions
        )
        c4 = cfg.channels(4)
        self.mbstd = MinibatchStdLayer(cfg.mbstd_group_size, cfg.mbstd_channels)
        self.conv = Conv2dLayer(c4 + cfg.mbstd_channels, c4, 3)
        self.fc = FullyConnectedLayer(c4 * 16, c4, activation="lrelu")
        self.out = FullyConnectedLayer(c4, 1)

    def forward(self, img: Tensor) -> Tensor:
        x = self.fromrgb(img)
        for block in self.blocks:
            x = block(x)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))
