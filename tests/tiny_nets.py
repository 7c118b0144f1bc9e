"""Tiny real networks saved to files, for tests that need a generator or a feature network."""

from pathlib import Path

import torch

from advmix.checkpoints import save_generator
from advmix.perceptual import FeatureConfig, VGGFeatures, save_features
from advmix.stylegan import Generator, GeneratorConfig


def tiny_generator(path: Path, k: int = 4, seed: int = 0, resolution: int = 32) -> Path:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(resolution=resolution, z_dim=32, w_dim=32, channel_max=32, k=k)
    save_generator(Generator(cfg), path)
    return path


def tiny_features(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_features(VGGFeatures(FeatureConfig(width=0.125)), path)
    return path
