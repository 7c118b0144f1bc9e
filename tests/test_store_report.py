"""``advmix store report`` on a small store written through the store writer."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from advmix.checkpoints import generator_fingerprint, load_generator
from advmix.classifiers import SmallCNN, save_classifier
from advmix.datasets import load
from schemas.layout import Layout
from schemas.manifest import Provenance
from schemas.writer import StoreWriter
from tests.tiny_nets import tiny_generator


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    g_path = tiny_generator(root / "G.pt", k=4)
    G = load_generator(g_path)
    data = load("cfmnist:iid?limit=24")
    layout = Layout(
        num_samples=24, shard_size=16, num_ws=G.num_ws, w_dim=G.cfg.w_dim,
        image_shape=(3, 32, 32), label_names=data.label_names,
    )  # fmt: skip
    provenance = Provenance(k=4, generator_fingerprint=generator_fingerprint(G))
    writer = StoreWriter.create(str(root / "store"), layout, provenance)
    w = G.mapping(torch.randn(24, G.cfg.z_dim)).numpy()
    for shard in range(2):
        lo, hi = layout.shard_bounds(shard)
        writer.write_shard(
            shard, w=w[lo:hi], labels=data.labels[lo:hi], images=data.images[lo:hi],
            rows={"id": data.ids[lo:hi], "rec_mse": [0.0] * (hi - lo), "rec_psnr": [0.0] * (hi - lo)},
        )  # fmt: skip
    writer.commit()
    torch.manual_seed(0)
    save_classifier(SmallCNN(), root / "cls.pt")
    other = tiny_generator(root / "other.pt", k=4, seed=1)
    return root, g_path, other


def _report(*args):
    return subprocess.run(
        [sys.executable, "-m", "cli", "store", "report", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_report_measures_and_draws(setup):
    root, g_path, _ = setup
    result = _report(
        str(root / "store"), "--generator", str(g_path), "--classifier", str(root / "cls.pt"),
        "--limit", "20", "--grid", str(root / "grid.png"), "--json-out", str(root / "r.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((root / "r.json").read_text())
    assert metrics["samples"] == 20 and metrics["k"] == 4
    for key in ("class_kept_reconstruction", "class_kept_random_mix"):
        assert 0.0 <= metrics[key] <= 1.0
    assert np.isfinite(metrics["psnr_mean_db"])
    width, height = Image.open(root / "grid.png").size
    assert (width, height) == (16 * 34 + 2, 3 * 34 + 2)  # originals, reconstructions, mixes


def test_report_refuses_another_generator(setup):
    root, _, other = setup
    result = _report(
        str(root / "store"), "--generator", str(other), "--classifier", str(root / "cls.pt")
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1


def test_report_judges_advmix_mixes_against_a_trained_classifier(setup):
    root, g_path, _ = setup
    result = _report(
        str(root / "store"), "--generator", str(g_path), "--classifier", str(root / "cls.pt"),
        "--against", str(root / "cls.pt"), "--attack-steps", "2", "--limit", "20",
        "--style-samples", "64", "--json-out", str(root / "against.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((root / "against.json").read_text())
    assert metrics["advmix_samples"] == 20
    assert 0.0 <= metrics["advmix_fooled"] <= 1.0
    assert 0.0 <= metrics["class_kept_advmix_mix"] <= 1.0
    # an untrained classifier is fooled by most mixes: the rate over those is defined
    if metrics["advmix_fooled"] > 0:
        assert 0.0 <= metrics["class_kept_advmix_mix_that_fools"] <= 1.0
    else:
        assert metrics["class_kept_advmix_mix_that_fools"] is None


def test_report_against_an_attribute_classifier_is_refused(setup, tmp_path):
    root, g_path, _ = setup
    from advmix.classifiers import ClassifierConfig, build_classifier

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(num_classes=2, targets=["Smiling", "Male"]))
    save_classifier(model, tmp_path / "attrs.pt")
    result = _report(
        str(root / "store"), "--generator", str(g_path), "--classifier", str(root / "cls.pt"),
        "--against", str(tmp_path / "attrs.pt"), "--limit", "8",
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "predicts attributes" in result.stderr and result.stderr.count("\n") == 1
