"""IRM's Colored Fashion-MNIST (``irmcf:train``, ``irmcf:test``), built as its authors built it.

Source: Ahuja, Shanmugam, Varshney and Dhurandhar, "Invariant Risk Minimization Games"
(ICML 2020), code github.com/IBM/OoD, ``IRM_games/data_construct.py``, class
``assemble_data_mnist_fashion`` (environments ``p_color_list = [0.2, 0.1]``, test
``p_color_test = 0.9``, ``p_label = 0.25`` in ``IRM_games_jmtd_illustration_notebook.ipynb``).
This module is our own code for that construction:

- Fashion-MNIST without class 8 (bag): 54,000 training and 9,000 test images.
- Binary label: 1 for sandal, sneaker and ankle boot (5, 7, 9), else 0; the observed label is
  that label flipped with probability 0.25, in every environment, the test one included.
- Colour: the observed label flipped with probability ``p_e``; 1 is red, 0 green. With pixels
  in [0, 1], pixels above 0.5 become 1 in the colour's channel and 0 in the other; pixels at
  or below 0.5 keep their grey value in both. (The original images have only these two
  channels; ours add a blue channel of zeros and pad 28x28 to 32x32 with black.)
- Training: a shuffled split of the training images into two environments of 27,000 (a
  2-fold ``KFold``), ``p_e`` 0.2 (environment 0) and 0.1 (environment 1). Test: the 9,000 test
  images, ``p_e`` 0.9. The best invariant (shape-only) predictor scores 0.75 on every one.

Where we differ, on purpose: every draw is seeded by the spec's ``seed`` (the original is
unseeded), and each environment keeps Fashion-MNIST's order (the original lists its red
images before its green ones), so ``limit`` / ``offset`` take unbiased slices.
``irmcf:train`` lists environment 0, then environment 1; its ``env`` attribute says which.

Our addition: ``irmcf:train-random`` is ``irmcf:train`` (same items, environments and labels)
with every colour a fair coin, independent of the label: unlabelled images in which colour
varies freely, for training a generator whose fine styles carry it (as ``cfmnist:train-random``
is for ``cfmnist``). It says which factor is the nuisance, which IRM's protocol does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from advmix.datasets import IMAGE_SIZE, ImageSet, find_root, load_idx_pair
from advmix.errors import DataError
from advmix.spec import DatasetSpec

LABEL_NAMES = ("clothing", "footwear")
DROPPED_CLASS = 8  # bag
FOOTWEAR = (5, 7, 9)  # sandal, sneaker, ankle boot
LABEL_FLIP = 0.25
TRAIN_COLOR_FLIPS = (0.2, 0.1)  # p_e of environments 0 and 1
TEST_COLOR_FLIP = 0.9
RANDOM_COLOR_FLIP = 0.5  # irmcf:train-random: colour independent of the label
# x / 255 > 0.5 holds exactly for uint8 x >= 128.
BRIGHT = 128
ENV_ATTRIBUTE = "env"
# train-random draws as train does (same environments and label noise), then its own colours.
_SPLIT_IDS = {"train": 0, "train-random": 0, "test": 1}


@dataclass
class Construction:
    """One split as built, before slicing: per sample its grey item [N, 28, 28] uint8, its
    index in the IDX file, its clean and observed labels, its colour (1 red) and environment."""

    gray: np.ndarray
    source: np.ndarray
    clean: np.ndarray
    label: np.ndarray
    red: np.ndarray
    env: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


def _bernoulli(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    return (rng.random(n) < p).astype(np.int64)


def construct(gray: np.ndarray, classes: np.ndarray, split: str, seed: int) -> Construction:
    """The split built from Fashion-MNIST items ``gray`` [N, 28, 28] and ``classes`` [N]."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    kept = np.flatnonzero(classes != DROPPED_CLASS)
    if split in ("train", "train-random"):
        # A 2-fold KFold(shuffle=True): a random half (the larger one first when odd) per
        # environment, each listed in the file's order.
        order = rng.permutation(len(kept))
        half = (len(kept) + 1) // 2
        members = [np.sort(order[:half]), np.sort(order[half:])]
        flips = TRAIN_COLOR_FLIPS if split == "train" else (RANDOM_COLOR_FLIP,) * 2
    else:
        members, flips = [np.arange(len(kept))], (TEST_COLOR_FLIP,)
    parts = []
    for env, (rows, p_e) in enumerate(zip(members, flips, strict=True)):
        source = kept[rows]
        clean = np.isin(classes[source], FOOTWEAR).astype(np.int64)
        label = clean ^ _bernoulli(rng, LABEL_FLIP, len(rows))
        red = label ^ _bernoulli(rng, p_e, len(rows))
        parts.append((source, clean, label, red, np.full(len(rows), env, dtype=np.int64)))
    source, clean, label, red, env = (np.concatenate(column) for column in zip(*parts, strict=True))
    return Construction(gray[source], source, clean, label, red, env)


def colorize(gray: np.ndarray, red: np.ndarray) -> np.ndarray:
    """[N, 28, 28] uint8 items and colours [N] (1 red, 0 green) -> [N, 3, 32, 32] uint8."""
    pad = (IMAGE_SIZE - gray.shape[-1]) // 2
    padded = np.pad(gray, ((0, 0), (pad, pad), (pad, pad)))
    bright = padded >= BRIGHT
    lit = np.where(bright, np.uint8(255), padded)  # the colour's channel
    dark = np.where(bright, np.uint8(0), padded)  # the other one
    is_red = red.astype(bool)[:, None, None]
    out = np.zeros((len(gray), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    out[:, 0] = np.where(is_red, lit, dark)
    out[:, 1] = np.where(is_red, dark, lit)
    return out


def colour_of(images: np.ndarray) -> np.ndarray:
    """The colour an image shows [N]: 1 red, 0 green, -1 when it has no pixel above 0.5
    (both channels then hold the same grey)."""
    totals = images[:, :2].reshape(len(images), 2, -1).astype(np.int64).sum(axis=2)
    return np.where(totals[:, 0] > totals[:, 1], 1, np.where(totals[:, 0] < totals[:, 1], 0, -1))


def load(spec: DatasetSpec, data_root: str | None = None) -> ImageSet:
    """``irmcf:train`` (with its ``env`` attribute) or ``irmcf:test`` as an ImageSet."""
    root = find_root("cfmnist", spec.root or data_root)
    train = spec.split != "test"
    gray, classes = load_idx_pair(root, train=train)
    built = construct(gray, classes, spec.split, spec.seed)
    if spec.offset >= len(built):
        raise DataError(f"dataset spec {str(spec)!r}: offset {spec.offset} >= {len(built)} samples")
    stop = len(built) if spec.limit is None else min(len(built), spec.offset + spec.limit)
    keep = slice(spec.offset, stop)
    ids = [f"irmcf/{spec.split}/{i:06d}" for i in range(spec.offset, stop)]
    images = colorize(built.gray[keep], built.red[keep])
    return ImageSet(
        images, built.label[keep], ids, LABEL_NAMES, str(spec),
        attributes=built.env[keep, None].astype(np.int8) if train else None,
        attribute_names=(ENV_ATTRIBUTE,) if train else (),
    )  # fmt: skip
