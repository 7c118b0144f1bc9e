"""Amortised encoder: one forward pass from an image to W+ styles, Algorithm 1's starting point.

Algorithm 1 starts every image at the mean style and spends its iterations walking to the
image. An encoder trained on the generator's own samples (``gan/encoder.py``) predicts a
starting point near the answer, so the same loss converges in fewer steps; the optimisation
itself is unchanged (``invert(..., w_start=E(images))``), mixing loss included.

Architecture (``Encoder``):
- a convolutional trunk from R x R down to 4 x 4: a 1x1 ``from_rgb``, then per resolution a
  3x3 conv and a stride-2 3x3 conv, LeakyReLU(0.2) after each; channels start at ``width`` and
  double per halving up to ``max_width``. No normalisation layers, so every image's styles
  depend on that image alone, as in inversion and synthesis.
- a global code: the 4 x 4 features flattened (they keep the layout of the object, which the
  coarse styles hold) through one fully connected layer.
- one linear head per style index. Head ``i`` reads the global code and the average-pooled
  trunk features at the resolution where the generator consumes style ``i`` (pSp-style: coarse
  styles read deep low-resolution features, fine styles, mostly colour and texture, read
  shallow high-resolution ones). The heads start at zero and add to the generator's ``w_avg``,
  so an untrained encoder predicts exactly the mean style: Algorithm 1's own initialisation.

Two kinds (``EncoderConfig.kind``, one class each, ``ENCODER_KINDS``):
- ``direct`` (``Encoder``): the one pass above.
- ``iterative`` (``IterativeEncoder``, ReStyle-style): a direct encoder's prediction, then
  ``passes`` refinement passes. Each pass decodes the current styles and a second trunk of the
  same design reads the image and that reconstruction side by side (2C channels) and predicts
  a residual added to the styles. A pass costs one synthesis forward and two small convnets,
  far less than an optimisation step (two syntheses and two VGG passes, forward and
  backward), and it corrects the errors that the direct pass makes consistently. It needs the
  generator at prediction time: ``attach(G)`` before calling it (``load_encoder`` callers do).

Files: ``save_encoder`` / ``load_encoder`` write and read a tensors-only checkpoint (config as
JSON, weights, a content fingerprint, the fingerprint of the generator it was trained for).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmix.checkpoints import (
    GENERATOR_FORMAT,
    CheckpointError,
    atomic_save,
    safe_load,
    state_fingerprint,
)

ENCODER_FORMAT = "advmix-encoder"
ENCODER_VERSION = 2  # 2 adds the iterative kind; version 1 files are direct encoders
READABLE_VERSIONS = (1, 2)
_SLOPE = 0.2


@dataclass
class EncoderConfig:
    """Architecture of an encoder; JSON-serialisable and stored in every encoder checkpoint."""

    resolution: int
    num_ws: int
    w_dim: int
    img_channels: int = 3
    width: int = 32  # channels at full resolution; doubled per halving
    max_width: int = 256
    kind: str = "direct"  # a key of ENCODER_KINDS
    passes: int = 0  # refinement passes of the iterative kind

    def __post_init__(self) -> None:
        res = self.resolution
        if not (isinstance(res, int) and 8 <= res <= 1024 and res & (res - 1) == 0):
            raise ValueError(f"resolution must be a power of two in 8..1024, got {res!r}")
        for name in ("num_ws", "w_dim", "img_channels", "width", "max_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.kind not in KIND_PASSES:
            raise ValueError(
                f"encoder kind must be one of {sorted(KIND_PASSES)}, got {self.kind!r}"
            )
        low, high = KIND_PASSES[self.kind]
        if not (isinstance(self.passes, int) and low <= self.passes <= high):
            raise ValueError(
                f"the {self.kind} kind takes {low}..{high} passes, got {self.passes!r}"
            )

    def trunk(self, img_channels: int | None = None) -> EncoderConfig:
        """The config of one direct trunk of this encoder (``img_channels`` inputs)."""
        channels = self.img_channels if img_channels is None else img_channels
        return dataclasses.replace(self, kind="direct", passes=0, img_channels=channels)

    @property
    def trunk_resolutions(self) -> list[int]:
        """R, R/2, ..., 4: the resolutions of the trunk's feature maps."""
        return [2**i for i in range(int(math.log2(self.resolution)), 1, -1)]

    def channels(self, res: int) -> int:
        halvings = int(math.log2(self.resolution // res))
        return min(self.width * 2**halvings, self.max_width)

    def style_resolution(self, index: int) -> int:
        """Resolution of the generator layer that reads style ``index``: 4 for style 0, then two
        styles per doubling (NVlabs indexing: a block's toRGB shares its index with the next
        block's first conv), clipped to 4..R for encoders with unusual ``num_ws``."""
        res = 4 * 2 ** ((index + 1) // 2)
        return max(4, min(res, self.resolution))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.kind == "direct":  # direct configs serialise (and fingerprint) as in version 1
            del data["kind"], data["passes"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        if not isinstance(data, dict):
            raise ValueError(f"encoder config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown encoder config keys {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)  # fmt: skip
        if missing:
            raise ValueError(f"encoder config lacks {missing}")
        return cls(**data)


# Allowed passes per kind; the kinds' classes are in ENCODER_KINDS, after them.
KIND_PASSES = {"direct": (0, 0), "iterative": (1, 16)}


class _DownBlock(nn.Module):
    """3x3 conv at resolution r (the features the heads pool), then a stride-2 conv to r/2."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.down = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = F.leaky_relu(self.conv(x), _SLOPE)
        return features, F.leaky_relu(self.down(features), _SLOPE)


class StylePredictor(nn.Module):
    """What every encoder kind shares: its config, and the W+ shape it predicts."""

    cfg: EncoderConfig

    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    @property
    def w_dim(self) -> int:
        return self.cfg.w_dim


class Encoder(StylePredictor):
    """Images [B, C, R, R] in [-1, 1] -> W+ styles [B, num_ws, w_dim] (module docstring)."""

    def __init__(self, cfg: EncoderConfig, w_avg: Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        res = cfg.trunk_resolutions
        self.from_rgb = nn.Conv2d(cfg.img_channels, cfg.channels(res[0]), 1)
        self.blocks = nn.ModuleList(
            _DownBlock(cfg.channels(r), cfg.channels(r // 2)) for r in res[:-1]
        )
        c4 = cfg.channels(4)
        self.conv4 = nn.Conv2d(c4, c4, 3, padding=1)
        self.global_fc = nn.Linear(c4 * 16, c4)
        self.heads = nn.ModuleList(
            nn.Linear(c4 + cfg.channels(cfg.style_resolution(i)), cfg.w_dim)
            for i in range(cfg.num_ws)
        )
        for module in self.modules():
            # He initialisation for LeakyReLU keeps the signal's scale through the trunk
            # (PyTorch's default shrinks it layer by layer, and training stalled on it).
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, a=_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        for head in self.heads:  # start at w_avg exactly (module docstring)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        if w_avg is None:
            w_avg = torch.zeros(cfg.w_dim)
        if tuple(w_avg.shape) != (cfg.w_dim,):
            raise ValueError(f"w_avg must be [{cfg.w_dim}], got {list(w_avg.shape)}")
        self.register_buffer("w_avg", w_avg.detach().to(torch.float32).clone())

    def attach(self, G) -> Encoder:
        """A direct encoder needs no generator to predict; here for the common interface."""
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.w_avg + self.offsets(images)

    def offsets(self, images: Tensor) -> Tensor:
        """The heads' outputs [B, num_ws, w_dim], before the base they are added to."""
        cfg = self.cfg
        expected = (cfg.img_channels, cfg.resolution, cfg.resolution)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [B, {', '.join(map(str, expected))}], "
                             f"got {list(images.shape)}")  # fmt: skip
        x = F.leaky_relu(self.from_rgb(images.to(self.w_avg.dtype)), _SLOPE)
        pooled: dict[int, Tensor] = {}
        for r, block in zip(cfg.trunk_resolutions, self.blocks, strict=False):
            features, x = block(x)
            pooled[r] = features.mean(dim=(2, 3))
        x = F.leaky_relu(self.conv4(x), _SLOPE)
        pooled[4] = x.mean(dim=(2, 3))
        code = F.leaky_relu(self.global_fc(x.flatten(1)), _SLOPE)
        offsets = [
            head(torch.cat([code, pooled[cfg.style_resolution(i)]], dim=1))
            for i, head in enumerate(self.heads)
        ]
        return torch.stack(offsets, dim=1)


class IterativeEncoder(StylePredictor):
    """A direct ``base`` pass, then ``passes`` residual passes of ``refiner`` (module
    docstring). The refiner's heads start at zero, so an untrained refiner keeps the base's
    prediction."""

    def __init__(self, cfg: EncoderConfig, w_avg: Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.base = Encoder(cfg.trunk(), w_avg=w_avg)
        self.refiner = Encoder(cfg.trunk(2 * cfg.img_channels))
        self._generator: list = []  # a list, so the generator is not a submodule of ours

    @property
    def w_avg(self) -> Tensor:
        return self.base.w_avg

    def attach(self, G) -> IterativeEncoder:
        """Use generator ``G`` (the one this encoder was trained for) to decode between passes."""
        if (G.num_ws, G.w_dim) != (self.cfg.num_ws, self.cfg.w_dim):
            raise ValueError(f"the generator's styles are [{G.num_ws}, {G.w_dim}], this encoder "
                             f"predicts [{self.cfg.num_ws}, {self.cfg.w_dim}]")  # fmt: skip
        self._generator = [G]
        return self

    def refine(self, images: Tensor, ws: Tensor, reconstruction: Tensor) -> Tensor:
        """One pass: ``ws`` plus the refiner's residual for ``images`` beside their current
        ``reconstruction``."""
        return ws + self.refiner.offsets(torch.cat([images, reconstruction], dim=1))

    def forward(self, images: Tensor, passes: int | None = None) -> Tensor:
        if not self._generator:
            raise RuntimeError("an iterative encoder needs its generator: call attach(G) first")
        G = self._generator[0]
        ws = self.base(images)
        for _ in range(self.cfg.passes if passes is None else passes):
            reconstruction = G.synthesis(ws, noise_mode="const").to(ws.dtype)
            ws = self.refine(images.to(ws.dtype), ws, reconstruction)
        return ws


ENCODER_KINDS: dict[str, type[nn.Module]] = {"direct": Encoder, "iterative": IterativeEncoder}


def build_encoder(cfg: EncoderConfig, w_avg: Tensor | None = None) -> nn.Module:
    """An encoder of ``cfg.kind``."""
    return ENCODER_KINDS[cfg.kind](cfg, w_avg=w_avg)


# ----------------------------------------------------------------------------------------------
# The loss Algorithm 1 reconstructs with (advmix.inversion, normalize_features=True)


def _unit_channels(features: Tensor) -> Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + 1e-8)


def perceptual_distance(
    feats: Sequence[Tensor], targets: Sequence[Tensor], weights: Sequence[float] | None = None
) -> Tensor:
    """Per-image [B] sum over taps of ``w_i * mean_positions(sum_channels(|u(f) - u(t)|^2))``,
    ``u`` the unit normalisation over channels: Algorithm 1's reconstruction feature term, so
    the encoder is trained toward what inversion will then refine."""
    weights = [1.0] * len(feats) if weights is None else list(weights)
    total = 0.0
    for w, f, t in zip(weights, feats, targets, strict=True):
        d = (_unit_channels(f) - _unit_channels(t)).square().sum(dim=1).flatten(1).mean(dim=1)
        total = total + w * d
    return total


# ----------------------------------------------------------------------------------------------
# Files


def encoder_fingerprint(E: Encoder | IterativeEncoder) -> str:
    return state_fingerprint(E.cfg.to_json(), E.state_dict())


def save_encoder(
    E: Encoder | IterativeEncoder, path, generator_fingerprint: str, extra: dict | None = None
) -> str:
    """Write config + weights (tensors only) atomically; returns the content fingerprint.

    ``generator_fingerprint`` names the generator whose styles the encoder predicts, so a user
    can refuse pairing it with another; ``extra`` (JSON-serialisable) holds training facts."""
    state = {k: v.detach().to("cpu").clone() for k, v in E.state_dict().items()}
    fingerprint = state_fingerprint(E.cfg.to_json(), state)
    payload = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_VERSION,
        "config": E.cfg.to_json(),
        "state_dict": state,
        "fingerprint": fingerprint,
        "generator_fingerprint": str(generator_fingerprint),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    atomic_save(payload, path)
    return fingerprint


def load_encoder(path, map_location="cpu") -> tuple[Encoder | IterativeEncoder, dict]:
    """(encoder in eval mode, frozen; {"fingerprint", "generator_fingerprint", "extra"}).
    An iterative encoder still needs ``attach(G)`` before it predicts.

    Every problem is a one-line CheckpointError starting with the path."""
    data = safe_load(path, map_location="cpu", what="encoder checkpoint")
    if not isinstance(data, dict) or data.get("format") != ENCODER_FORMAT:
        what = "a generator checkpoint, not" if _format(data) == GENERATOR_FORMAT else "not"
        raise CheckpointError(f"{path}: {what} an advmix encoder checkpoint")
    if data.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: encoder checkpoint version {data.get('version')!r} is not supported "
            f"(expected one of {list(READABLE_VERSIONS)})"
        )
    try:
        cfg = EncoderConfig.from_dict(json.loads(data["config"]))
        extra = json.loads(data["extra"])
        state, stored, generator_fp = (
            data["state_dict"], data["fingerprint"], data["generator_fingerprint"]
        )  # fmt: skip
        if not isinstance(state, dict) or not isinstance(stored, str):
            raise TypeError("state_dict or fingerprint has the wrong type")
        if not isinstance(generator_fp, str) or not isinstance(extra, dict):
            raise TypeError("generator_fingerprint or extra has the wrong type")
    except (KeyError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: malformed encoder checkpoint ({reason})") from None
    E = build_encoder(cfg)
    try:
        E.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])[:200]
        raise CheckpointError(f"{path}: weights do not match the stored config ({first})") from None
    if stored != encoder_fingerprint(E):
        raise CheckpointError(f"{path}: fingerprint mismatch, the file is corrupt")
    E = E.to(map_location).eval().requires_grad_(False)
    return E, {"fingerprint": stored, "generator_fingerprint": generator_fp, "extra": extra}


def _format(data) -> object:
    return data.get("format") if isinstance(data, dict) else None
