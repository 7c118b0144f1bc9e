"""Colored Fashion-MNIST protocol on real IDX files (the committed subset of Fashion-MNIST)."""

import gzip
import shutil

import numpy as np
import pytest

from advmix.datasets import MEAN_COLORS, colorize, load, sample_colors
from advmix.errors import DataError
from tests.conftest import FIXTURE_DATA


def _foreground_colors(images: np.ndarray) -> np.ndarray:
    """Per-image colour estimated as the brightest pixel's RGB divided by its max channel."""
    flat = images.reshape(len(images), 3, -1).astype(np.float32)
    brightest = flat.max(axis=1).argmax(axis=1)
    rgb = flat[np.arange(len(images)), :, brightest]
    return rgb / 255.0


def test_mean_colors_are_well_separated_and_bright():
    distances = np.linalg.norm(MEAN_COLORS[:, None] - MEAN_COLORS[None], axis=-1)
    assert distances[~np.eye(10, dtype=bool)].min() >= 0.5
    np.testing.assert_allclose(MEAN_COLORS.max(axis=1), 1.0)


def test_train_images_shape_labels_and_bias():
    data = load("cfmnist:train?limit=2000")
    assert data.images.shape == (2000, 3, 32, 32) and data.images.dtype == np.uint8
    assert set(np.unique(data.labels)) == set(range(10))
    assert data.images[:, :, :2, :].max() == 0  # padding is black
    colors = sample_colors(data.labels, "train", 0.05, 0)
    deviation = colors - MEAN_COLORS[data.labels]
    assert np.abs(deviation).max() <= 0.3  # clipped Gaussian noise of sigma 0.05
    assert 0.03 < deviation[(colors > 0.01) & (colors < 0.99)].std() < 0.07
    nearest = np.linalg.norm(colors[:, None] - MEAN_COLORS[None], axis=-1).argmin(axis=1)
    assert (nearest == data.labels).mean() == 1.0  # colour alone predicts the class


def test_sigma_controls_the_noise():
    labels = np.repeat(np.arange(10), 500)
    spread = [
        np.abs(sample_colors(labels, "iid", s, 0) - MEAN_COLORS[labels]).mean() for s in (0.0, 0.2)
    ]
    assert spread[0] == 0.0 and spread[1] > 0.05


def test_random_colors_are_independent_of_labels():
    labels = np.repeat(np.arange(10), 1000)
    colors = sample_colors(labels, "random", 0.05, 0)
    np.testing.assert_allclose(colors.max(axis=1), 1.0, atol=1e-5)
    per_class = np.stack([colors[labels == c].mean(axis=0) for c in range(10)])
    assert np.abs(per_class - colors.mean(axis=0)).max() < 0.05
    nearest = np.linalg.norm(colors[:, None] - MEAN_COLORS[None], axis=-1).argmin(axis=1)
    assert (nearest == labels).mean() < 0.2  # chance-level colour cue


def test_swapped_colors_never_match_the_own_class():
    labels = np.repeat(np.arange(10), 300)
    colors = sample_colors(labels, "swapped", 0.0, 0)
    own = np.linalg.norm(colors - MEAN_COLORS[labels], axis=1)
    assert own.min() >= 0.5
    assert len(np.unique(colors, axis=0)) == 10  # always some class's mean colour


def test_loading_is_deterministic_and_limit_keeps_samples():
    a = load("cfmnist:random?seed=1&limit=64")
    b = load("cfmnist:random?seed=1&limit=64")
    c = load("cfmnist:random?seed=2&limit=64")
    window = load("cfmnist:random?seed=1&offset=32&limit=32")
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    np.testing.assert_array_equal(a.images[32:], window.images)
    assert window.ids[0] == "cfmnist/random/000032"


def test_measured_colour_follows_the_protocol():
    data = load("cfmnist:iid?sigma=0&limit=300")
    measured = _foreground_colors(data.images)
    expected = MEAN_COLORS[data.labels]
    assert np.abs(measured - expected).max() < 0.02


def test_gray_variant_has_no_colour():
    data = load("cfmnist:swapped?gray=1&limit=50")
    assert (data.images[:, 0] == data.images[:, 1]).all()
    assert (data.images[:, 1] == data.images[:, 2]).all()


def test_colorize_pads_to_32():
    gray = np.full((2, 28, 28), 200, dtype=np.uint8)
    out = colorize(gray, np.array([[1, 0, 0], [0, 0.5, 1]], dtype=np.float32))
    assert out.shape == (2, 3, 32, 32)
    assert out[0, :, 16, 16].tolist() == [200, 0, 0]
    assert out[1, :, 16, 16].tolist() == [0, 100, 200]
    halves = colorize(np.full((1, 28, 28), 5, dtype=np.uint8), np.array([[0.5, 0.7, 0.9]]))
    assert halves[0, :, 16, 16].tolist() == [2, 4, 4]  # 2.5 rounds to even, as numpy's rint


def test_data_root_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load("cfmnist:train", data_root=str(tmp_path))


def test_truncated_data_root_is_a_clear_error(tmp_path, monkeypatch):
    source = FIXTURE_DATA
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        shutil.copy(f"{source}/{name}", tmp_path / name)
    with gzip.open(f"{source}/train-images-idx3-ubyte.gz") as f:
        head = f.read(16 + 28 * 28 * 100)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(head))
    monkeypatch.setenv("ADVMIX_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="truncated"):
        load("cfmnist:train?limit=10")
