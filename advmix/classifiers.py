"""Small image classifiers for 32x32 data, and their tensors-only checkpoints.

``SmallCNN`` is the default classifier of the project (evaluation of generators, and a small
architecture for the robustness experiments). Inputs are RGB float images in ``[0, 1]``,
``[B, 3, H, W]``; the network applies its own input mode (``gray-max``: the colour-blind
oracle sees the max over the channels), so every caller passes the same images.
``features(x)`` is the penultimate representation (used for the FID-style distance in
``advmix gan evaluate``). In eval mode every image is independent of its batch-mates
(BatchNorm uses running statistics).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from advmix.checkpoints import CheckpointError, atomic_save, safe_load

CLASSIFIER_FORMAT = "advmix-classifier"
CLASSIFIER_VERSION = 1


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    in_channels: int = 3
    width: int = 32
    # How RGB images are turned into the network's input: "rgb" (as is) or "gray-max" (max over
    # the colour channels: on Colored Fashion-MNIST, where every colour has max channel 1, this
    # recovers the grey item exactly, so a gray-trained network is colour-blind).
    input_mode: str = "rgb"
    arch: str = "smallcnn"  # smallcnn | resnet18 | resnet50 (torchvision's, no download)
    input_size: int | None = None  # images are resized to this first (None: as they come)
    targets: list[str] | None = None  # the attributes it predicts (None: the store's classes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def multi_label(self) -> bool:
        return bool(self.targets) and len(self.targets) > 1


def fit_input(images: Tensor, size: int | None) -> Tensor:
    """Images resized to the classifier's input size (antialiased when shrinking)."""
    if size is None or images.shape[-1] == size:
        return images
    shrink = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink)  # fmt: skip


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """4 conv layers (w, 2w, 4w, 4w channels, 2x max-pool after the first three), global
    average pool, linear: about 12 M multiply-adds per 32x32 image."""

    # oneDNN's channels-last kernels are faster on the CPU, max-pooling most of all
    # (bench_training.classifier_layout compares both); GPUs keep NCHW, unmeasured there.
    cpu_channels_last = True

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 32,
        cfg: ClassifierConfig | None = None,
    ):
        super().__init__()
        self.cfg = cfg or ClassifierConfig(num_classes, in_channels, width)
        c, w = self.cfg.in_channels, self.cfg.width
        self.body = nn.Sequential(
            conv_bn_relu(c, w),
            nn.MaxPool2d(2),
            conv_bn_relu(w, 2 * w),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * w, 4 * w),
            nn.MaxPool2d(2),
            conv_bn_relu(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, self.cfg.num_classes)
        self.feature_dim = 4 * w

    def prepare(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] RGB in [0, 1] -> the network's input per ``cfg.input_mode``."""
        images = fit_input(images, self.cfg.input_size)
        if self.cfg.input_mode == "gray-max" and images.shape[1] != 1:
            images = images.amax(dim=1, keepdim=True)
        return images

    def features(self, x: Tensor) -> Tensor:
        x = self.prepare(x) * 2 - 1
        if self.cpu_channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def for_inference(self) -> SmallCNN:
        """A copy in eval mode with each BatchNorm folded into the convolution before it: the
        same scores up to float rounding, without BatchNorm's pass over every feature map (a
        fifth of an evaluation's time on the CPU)."""
        fused = copy.deepcopy(self).eval()
        for block in fused.body:
            if isinstance(block, nn.Sequential) and isinstance(block[1], nn.BatchNorm2d):
                block[0] = fuse_conv_bn_eval(block[0], block[1])
                block[1] = nn.Identity()
        return fused


class ResNet(nn.Module):
    """torchvision's ResNet-18/50 built here (no hub download), fed RGB images in [0, 1]: resized
    to ``cfg.input_size``, grey repeated over RGB for ``gray-max``, ImageNet-normalised."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        from torchvision import models

        self.cfg = cfg
        self.net = {"resnet18": models.resnet18, "resnet50": models.resnet50}[cfg.arch](
            weights=None, num_classes=cfg.num_classes
        )
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                             persistent=False)  # fmt: skip
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
                             persistent=False)  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = fit_input(x, self.cfg.input_size)
        if self.cfg.input_mode == "gray-max":
            x = x.amax(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        return self.net((x - self.mean) / self.std)

    def for_inference(self) -> ResNet:
        """Itself in eval mode: its BatchNorms stay (not measured whether folding them pays)."""
        return self.eval()

    def load_backbone(self, path) -> None:
        """Pretrained torchvision weights from a file (``weights_only``), all but the last
        layer (its classes are ours). Weights of another network are refused with one line
        naming the first tensor that differs, before anything is copied."""
        state = safe_load(path, what="torchvision weights file")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a state dict of torchvision weights "
                                  f"(it holds a {type(state).__name__})")  # fmt: skip
        state = {str(k).removeprefix("module."): v for k, v in state.items()
                 if not str(k).removeprefix("module.").startswith("fc.")}  # fmt: skip
        ours = {k: v for k, v in self.net.state_dict().items() if not k.startswith("fc.")}
        mismatch = first_mismatch(ours, state, self.cfg.arch)
        if mismatch:
            raise CheckpointError(f"{path}: not {self.cfg.arch} weights: {mismatch}")
        self.net.load_state_dict(state, strict=False)


def first_mismatch(ours: dict[str, Tensor], theirs: dict, arch: str) -> str | None:
    """The first tensor (in the network's order) that a file of weights lacks, holds in
    another shape or holds as something else, then the first the network lacks; None when
    every tensor fits. BatchNorm's step counters may be absent: torch fills them in."""
    for key, ours_value in ours.items():
        shape = tuple(ours_value.shape)
        if key not in theirs:
            if key.endswith("num_batches_tracked"):
                continue
            return f"{key} {shape} is missing from the file"
        value = theirs[key]
        if not isinstance(value, Tensor):
            return f"{key} is not a tensor in the file ({type(value).__name__}), {shape} in {arch}"
        if tuple(value.shape) != shape:
            return f"{key} is {tuple(value.shape)} in the file, {shape} in {arch}"
    extra = next((key for key in theirs if key not in ours), None)
    if extra is None:
        return None
    value = theirs[extra]
    named = f"{extra} {tuple(value.shape)}" if isinstance(value, Tensor) else extra
    return f"{named} is in the file but not in {arch}"


ARCHITECTURES = {"smallcnn": SmallCNN, "resnet18": ResNet, "resnet50": ResNet}


def build_classifier(cfg: ClassifierConfig) -> nn.Module:
    if cfg.arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown classifier architecture {cfg.arch!r}")
    return ARCHITECTURES[cfg.arch](cfg=cfg)


def make_classifier(
    num_classes: int,
    width: int = 32,
    grayscale: bool = False,
    arch: str = "smallcnn",
    input_size: int | None = None,
    targets: list[str] | None = None,
) -> nn.Module:
    """A classifier for RGB inputs, or the colour-blind one (``grayscale``: the oracle)."""
    return build_classifier(ClassifierConfig(
        num_classes=num_classes, in_channels=1 if grayscale and arch == "smallcnn" else 3,
        width=width, input_mode="gray-max" if grayscale else "rgb", arch=arch,
        input_size=input_size, targets=targets,
    ))  # fmt: skip


@torch.no_grad()
def predict(model: nn.Module, images01: Tensor, batch: int = 500) -> Tensor:
    """Predicted classes [N] of images in [0, 1], ``batch`` at a time."""
    return torch.cat(
        [model(images01[i : i + batch]).argmax(1) for i in range(0, len(images01), batch)]
    )


def save_classifier(model: nn.Module, path, extra: dict | None = None) -> None:
    payload = {
        "format": CLASSIFIER_FORMAT,
        "version": CLASSIFIER_VERSION,
        "config": model.cfg.to_json(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    atomic_save(payload, path)


def restore_classifier(config_json: str, state_dict: dict, path) -> nn.Module:
    """The classifier a checkpoint describes: built from its config, with its weights."""
    try:
        model = build_classifier(ClassifierConfig(**json.loads(config_json)))
        model.load_state_dict(state_dict)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: malformed classifier checkpoint ({msg})") from None
    return model


def load_classifier(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, extra dict) from a ``save_classifier`` file."""
    data = safe_load(path, map_location=map_location, what="classifier checkpoint")
    if not isinstance(data, dict) or data.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path}: not an advmix classifier checkpoint")
    try:
        config, weights = data["config"], data["state_dict"]
        extra = json.loads(data.get("extra", "{}"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed classifier checkpoint ({exc!r})") from None
    return restore_classifier(config, weights, path).to(map_location).eval(), extra
