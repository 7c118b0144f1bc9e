"""Train the shipped perceptual network: VGG16 to conv3_2 (half width) on Colored Fashion-MNIST.

No ImageNet weights can be downloaded here, so Algorithm 1's VGG loss uses a VGG16 trunk
trained as a classifier on ``cfmnist:train-random`` (random colours, so the features describe
shape rather than the biased colour). Half width costs a quarter of the FLOPs of VGG16, which
is what makes CPU inversion affordable; ImageNet weights stay available at full width.

    python -m gan.features --out advmix/assets/cfmnist-vgg.pt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from advmix.datasets import load
from advmix.perceptual import FeatureConfig, VGGFeatures, save_features


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 127.5 - 1.0


class TrunkClassifier(nn.Module):
    def __init__(self, trunk: VGGFeatures, num_classes: int = 10) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.out_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images)[-1].mean(dim=(2, 3)))


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), 500):
            logits = model(to_unit_range(images[start : start + 500]))
            correct += int((logits.argmax(1).numpy() == labels[start : start + 500]).sum())
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="advmix/assets/cfmnist-vgg.pt")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", default="cfmnist:train-random?seed=7")
    parser.add_argument("--test", default="cfmnist:random?limit=2000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, test = load(args.train), load(args.test)
    model = TrunkClassifier(VGGFeatures(FeatureConfig(width=args.width, source="cfmnist")))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(train))
        for start in tqdm(range(0, len(order), 128), desc=f"epoch {epoch}", mininterval=5):
            batch = order[start : start + 128]
            loss = nn.functional.cross_entropy(
                model(to_unit_range(train.images[batch])), torch.from_numpy(train.labels[batch])
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        print(f"epoch {epoch}: test accuracy {accuracy(model, test.images, test.labels):.4f}")
    save_features(model.trunk, args.out)
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
