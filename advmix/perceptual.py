"""VGG16 perceptual features for Algorithm 1: activations after conv1_2, conv2_2 and conv3_2.

The network is torchvision's VGG16 up to conv3_2 (the only layers the loss reads). Weights:
- ``imagenet``: torchvision's ImageNet weights (needs them cached or a network connection);
- ``cfmnist``: the trunk the project trains on Colored Fashion-MNIST and ships in
  ``advmix/assets`` (``python -m gan.features``; see docs/model-card-features.md);
- a path or fsspec URL to a state dict: torchvision's ``vgg16`` keys (``features.N.*``) or a
  file written by :func:`save_features`.
Every variant takes images in [-1, 1] and normalises them as the ImageNet weights expect, so one
input convention serves all of them.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from advmix import shipped
from advmix.checkpoints import load_failure_reason, weights_only_load
from advmix.errors import AdvmixError

SHIPPED = {"cfmnist": shipped.FEATURES}
# Index in torchvision's vgg16().features of the ReLU after each tapped conv.
TAPS = {"conv1_2": 3, "conv2_2": 8, "conv3_2": 13}
_VGG16_CONVS = ((64, 64), (128, 128), (256, 256))  # (conv_a, conv_b) channels per block, to conv3_2
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class FeatureWeightsError(AdvmixError):
    """Perceptual weights that are missing, unsafe or of the wrong shape."""


@dataclass
class FeatureConfig:
    width: float = 1.0  # channel multiplier; 1.0 is VGG16 (required for ImageNet weights)
    source: str = "random"


class VGGFeatures(nn.Module):
    """VGG16 layers 0..13 with the layer indices of torchvision's ``vgg16().features``."""

    def __init__(self, cfg: FeatureConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FeatureConfig()
        layers: list[nn.Module] = []
        in_ch = 3
        for block, (ch_a, ch_b) in enumerate(_VGG16_CONVS):
            if block > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for ch in (ch_a, ch_b):
                out_ch = max(8, round(ch * self.cfg.width))
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.out_channels = in_ch
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> activations [B, C_i, H_i, W_i] for each tap."""
        x = ((images + 1.0) / 2.0 - self.mean) / self.std
        taps = set(TAPS.values())
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in taps:
                out.append(x)
        return out


def save_features(net: VGGFeatures, path: str | Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    torch.save({"config": asdict(net.cfg), "state_dict": state}, str(path))


def _read_state(location: str) -> dict:
    import fsspec

    try:
        with fsspec.open(location, "rb") as f:
            raw = f.read()
    except (OSError, ValueError, ImportError) as exc:
        raise FeatureWeightsError(f"cannot read perceptual weights {location}: {exc}") from None
    try:
        return weights_only_load(io.BytesIO(raw))
    except Exception as exc:  # unpickling errors come in many types; the message says enough
        reason = load_failure_reason(exc)
        raise FeatureWeightsError(
            f"{location}: not a plain tensor state dict (refused: {reason})"
        ) from None


def _imagenet_state() -> dict:
    from torchvision.models import VGG16_Weights

    try:
        return VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:
        hub = torch.hub.get_dir()
        raise FeatureWeightsError(
            f"ImageNet VGG16 weights are not in {hub}/checkpoints and could not be downloaded "
            f"({type(exc).__name__}); copy vgg16-397923af.pth there or pass a state-dict path"
        ) from None


def _trunk_only(state: dict) -> dict:
    """Keep the ``features.N.*`` entries up to conv3_2 from a full torchvision vgg16 state."""
    last = TAPS["conv3_2"]
    return {
        k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) <= last
    }


def load_features(weights: str = "cfmnist", device: str | torch.device = "cpu") -> VGGFeatures:
    """Frozen feature network in eval mode from ``imagenet``, ``cfmnist``, a path or a URL."""
    if weights == "imagenet":
        cfg, state = FeatureConfig(width=1.0, source="imagenet"), _trunk_only(_imagenet_state())
    else:
        location = str(SHIPPED.get(weights, weights))
        payload = _read_state(location)
        if isinstance(payload, dict) and "state_dict" in payload:
            cfg = FeatureConfig(**{**payload.get("config", {}), "source": weights})
            state = payload["state_dict"]
        else:
            cfg, state = FeatureConfig(width=1.0, source=weights), _trunk_only(payload)
    net = VGGFeatures(cfg)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise FeatureWeightsError(
            f"{weights}: weights do not fit VGG16 to conv3_2 ({reason})"
        ) from None
    return net.requires_grad_(False).eval().to(device)
