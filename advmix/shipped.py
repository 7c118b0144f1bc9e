"""The networks that ship with the project (``advmix/assets/``), named for what they are."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
# StyleGAN2 trained without labels on cfmnist:train-random (docs/model-card-generator.md).
GENERATOR = ASSETS / "cfmnist-G.pt"
# Colour-blind SmallCNN trained on all 60k grey training images: the evaluation classifier.
GRAY_CLASSIFIER = ASSETS / "cfmnist-gray-classifier.pt"
# Half-width VGG16 trunk trained on cfmnist:train-random: Algorithm 1's perceptual features.
FEATURES = ASSETS / "cfmnist-vgg.pt"
# Amortised encoder for GENERATOR: Algorithm 1's starting styles (docs/model-card-encoder.md).
ENCODER = ASSETS / "cfmnist-E.pt"
