"""Colored Fashion-MNIST (and colored MNIST): real images with a controllable spurious colour.

Protocol (DESIGN.md): 28x28 grayscale items are padded to 32x32 and their foreground is
multiplied by an RGB colour on black.
- ``train`` / ``iid``: class ``c`` gets ``clip(MEAN_COLORS[c] + sigma * N(0, I))`` (the bias).
- ``random``: a uniformly random hue at full brightness, independent of the label.
- ``swapped``: the mean colour of another class (uniformly among the other nine), plus noise.
- ``train-random``: training images with ``random`` colours, for label-free GAN training.
``gray=1`` gives the colour-blind variant (the plain item in all three channels), used by the
oracle baseline. Colours depend only on (seed, split, sample index), so ``limit`` and
``offset`` select samples without changing them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advmix.errors import DataError
from advmix.idx import read_idx
from advmix.spec import DatasetSpec, parse_spec

FASHION_LABELS = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
DIGIT_LABELS = tuple(str(d) for d in range(10))

# Ten well separated colours, all at full brightness (max channel 1) so that brightness carries
# no label information; the closest pair is 0.5 apart in RGB.
MEAN_COLORS = np.array(
    [
        [1.0, 0.0, 0.0],  # red
        [0.0, 1.0, 0.0],  # green
        [0.0, 0.0, 1.0],  # blue
        [1.0, 1.0, 0.0],  # yellow
        [1.0, 0.0, 1.0],  # magenta
        [0.0, 1.0, 1.0],  # cyan
        [1.0, 1.0, 1.0],  # white
        [1.0, 0.5, 0.0],  # orange
        [0.5, 0.0, 1.0],  # violet
        [0.0, 0.5, 1.0],  # azure
    ],
    dtype=np.float32,
)

SYSTEM_ROOTS = {
    "cfmnist": Path("/usr/share/datasets/fashion-mnist"),
    "cmnist": Path("/usr/share/datasets/mnist"),
}
_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLIT_IDS = {"train": 0, "train-random": 1, "iid": 2, "random": 3, "swapped": 4}
IMAGE_SIZE = 32
FG_THRESHOLD = 0.25  # max-channel intensity above which a pixel is foreground


@dataclass
class ImageSet:
    """Images [N, 3, H, W] uint8, labels [N] int64, and where each sample came from."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    label_names: tuple[str, ...]
    spec: str
    attributes: np.ndarray | None = None  # [N, A] 0/1 per named attribute (irmcf's env)
    attribute_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


def _idx_path(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def _torchvision_root(name: str) -> Path:
    """Download through torchvision into a cache dir; only works with internet access."""
    from torchvision import datasets as tvd

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "advmix"
    klass = tvd.FashionMNIST if name == "cfmnist" else tvd.MNIST
    try:
        for train in (True, False):
            klass(str(cache), train=train, download=True)
    except Exception as exc:  # any network failure: explain how to get the files instead
        hint = (
            "apt-get install dataset-fashion-mnist"
            if name == "cfmnist"
            else "put the MNIST IDX files in a folder"
        )
        raise DataError(
            f"{name}: IDX files not found and download failed ({type(exc).__name__}); "
            f"{hint}, or pass --data-root / set ADVMIX_DATA_ROOT"
        ) from None
    return cache / klass.__name__ / "raw"


def find_root(name: str, data_root: str | None = None) -> Path:
    """Folder with the IDX files: explicit root, $ADVMIX_DATA_ROOT, system package, download."""
    explicit = data_root or os.environ.get("ADVMIX_DATA_ROOT")
    if explicit:
        root = Path(explicit)
        if _idx_path(root, _FILES[True][0]) is None:
            raise DataError(f"{root}: no {_FILES[True][0]}[.gz] in the given data root")
        return root
    if _idx_path(SYSTEM_ROOTS[name], _FILES[True][0]) is not None:
        return SYSTEM_ROOTS[name]
    return _torchvision_root(name)


def load_idx_pair(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images [N, 28, 28] uint8 and labels [N] int64 from one IDX pair."""
    paths = []
    for stem in _FILES[train]:
        path = _idx_path(root, stem)
        if path is None:
            raise DataError(f"{root}: missing {stem}[.gz]")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{paths[0]}: expected uint8 images [N, H, W], got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{paths[1]}: {len(labels)} labels for {len(images)} images")
    return images, labels.astype(np.int64)


def sample_colors(labels: np.ndarray, split: str, sigma: float, seed: int) -> np.ndarray:
    """Colour [N, 3] in [0, 1] for each sample under the split's protocol."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    n = len(labels)
    noise = rng.standard_normal((n, 3)).astype(np.float32)
    if split in ("random", "train-random"):
        # A uniform direction in the colour cube scaled to full brightness: every hue, no
        # brightness cue, same brightness as the class means.
        raw = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32) + 1e-6
        return raw / raw.max(axis=1, keepdims=True)
    if split == "swapped":
        shift = rng.integers(1, len(MEAN_COLORS), size=n)
        means = MEAN_COLORS[(labels + shift) % len(MEAN_COLORS)]
    else:
        means = MEAN_COLORS[labels]
    return np.clip(means + sigma * noise, 0.0, 1.0)


def colorize(gray: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Pad [N, 28, 28] uint8 to 32x32 and multiply by colours [N, 3] -> [N, 3, 32, 32] uint8."""
    pad = (IMAGE_SIZE - gray.shape[-1]) // 2
    # In torch: the same float32 products and round-half-to-even as numpy, bit for bit, in
    # place and on every core (numpy's temporaries made this most of loading a test split).
    padded = torch.from_numpy(np.pad(gray, ((0, 0), (pad, pad), (pad, pad))))
    rgb = padded[:, None].float() * torch.from_numpy(colors)[:, :, None, None]
    return rgb.round_().clamp_(0, 255).to(torch.uint8).numpy()


def load(spec: DatasetSpec | str, data_root: str | None = None) -> ImageSet:
    """Materialise a dataset spec as an ImageSet."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    loader = loaders().get(spec.name)
    if loader is None:
        raise DataError(f"{spec}: read by the encode job from its folder (pipeline), not here")
    return loader(spec, data_root)


def loaders() -> dict:
    """Each dataset's loader, by name."""
    from advmix import irmcf  # built on this module's readers, so imported once they exist

    return {"cfmnist": load_colored, "cmnist": load_colored, "irmcf": irmcf.load}


def load_colored(spec: DatasetSpec, data_root: str | None = None) -> ImageSet:
    """Colored Fashion-MNIST or colored MNIST under this module's protocol."""
    root = find_root(spec.name, spec.root or data_root)
    train = spec.split in ("train", "train-random")
    gray, labels = load_idx_pair(root, train)
    colors = sample_colors(labels, spec.split, spec.sigma, spec.seed)
    stop = len(labels) if spec.limit is None else min(len(labels), spec.offset + spec.limit)
    if spec.offset >= len(labels):
        raise DataError(
            f"dataset spec {str(spec)!r}: offset {spec.offset} >= {len(labels)} samples"
        )
    keep = slice(spec.offset, stop)
    gray, labels, colors = gray[keep], labels[keep], colors[keep]
    if spec.gray:
        colors = np.ones_like(colors)
    names = FASHION_LABELS if spec.name == "cfmnist" else DIGIT_LABELS
    ids = [f"{spec.name}/{spec.split}/{i:06d}" for i in range(spec.offset, stop)]
    return ImageSet(colorize(gray, colors), labels, ids, names, str(spec))


def foreground_colour(images01: Tensor) -> Tensor:
    """Mean foreground colour [B, 3], normalised to max channel ~1 (intensity-weighted)."""
    intensity = images01.amax(dim=1)  # [B, H, W]
    mask = (intensity > FG_THRESHOLD).float()
    num = (images01 * mask[:, None]).sum(dim=[2, 3])
    den = (intensity * mask).sum(dim=[1, 2]).clamp_min(1e-6)[:, None]
    return num / den
