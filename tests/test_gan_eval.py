"""`advmix gan evaluate` metrics and the small classifier, on tiny real networks."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advmix.checkpoints import load_generator, save_generator
from advmix.classifiers import ClassifierConfig, SmallCNN, load_classifier, save_classifier
from advmix.datasets import foreground_colour
from advmix.errors import AdvmixError
from advmix.stylegan import Generator, GeneratorConfig
from cli.main import cli
from gan.evaluate import evaluate_generator, frechet_distance


def test_small_cnn_shapes_gray_input_and_round_trip(tmp_path):
    model = SmallCNN(num_classes=10, in_channels=3).eval()
    x = torch.rand(4, 3, 32, 32)
    assert model(x).shape == (4, 10) and model.features(x).shape == (4, model.feature_dim)
    gray = SmallCNN(cfg=ClassifierConfig(10, 1, 8, "gray-max")).eval()
    colour = torch.tensor([1.0, 0.2, 0.5])[None, :, None, None]
    item = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(gray.prepare(item * colour), item)  # colour-blind input
    save_classifier(gray, tmp_path / "c.pt", extra={"test_accuracy": 0.5})
    loaded, extra = load_classifier(tmp_path / "c.pt")
    assert extra["test_accuracy"] == 0.5 and loaded.cfg == gray.cfg
    torch.testing.assert_close(loaded(item), gray(item))
    save_generator(Generator(GeneratorConfig(resolution=8, channel_base=32)), tmp_path / "g.pt")
    with pytest.raises(AdvmixError, match="not an advmix classifier"):
        load_classifier(tmp_path / "g.pt")


def test_foreground_colour_and_frechet_distance():
    item = torch.zeros(1, 1, 8, 8)
    item[..., 2:6, 2:6] = 0.8
    colour = torch.tensor([0.2, 1.0, 0.5])
    est = foreground_colour(item * colour[None, :, None, None])
    torch.testing.assert_close(est[0], colour)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 2) == pytest.approx(12, rel=0.01)  # mean shift 2 per dim


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=8, w_dim=8, channel_base=64, channel_max=8))
    save_generator(G, root / "g.pt", extra={"iteration": 1})
    save_classifier(SmallCNN(cfg=ClassifierConfig(10, 1, 4, "gray-max")), root / "c.pt")
    return root


def test_evaluate_generator_reports_every_k(tiny_files):
    G = load_generator(tiny_files / "g.pt")
    clf, _ = load_classifier(tiny_files / "c.pt")
    m = evaluate_generator(
        G, clf, pairs=16, fd_samples=16, baseline_spec="cfmnist:random?offset=99"
    )
    assert set(m["per_k"]) == {str(k) for k in range(1, 8)}
    for v in m["per_k"].values():
        for key in ("class_kept", "colour_follows"):
            assert v[key] is None or 0 <= v[key] <= 1
    assert 1 <= m["chosen_k"] < 8 and m["fd_features"] >= 0
    assert len(m["generated_class_fractions"]) == 10


def test_cli_evaluate_writes_k_and_grids(tiny_files, tmp_path):
    args = ["gan", "evaluate", "--generator", str(tiny_files / "g.pt"), "--classifier",
            str(tiny_files / "c.pt"), "--pairs", "12", "--fd-samples", "12"]  # fmt: skip
    result = CliRunner().invoke(
        cli, [*args, "--write-k", str(tmp_path / "gk.pt"), "--k", "5", "--grids", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["written"]["k"] == 5
    G = load_generator(tmp_path / "gk.pt")
    assert G.cfg.k == 5
    assert (tmp_path / "mixing-k7.png").is_file() and (tmp_path / "samples.png").is_file()
    bad = CliRunner().invoke(cli, [*args, "--write-k", str(tmp_path / "x.pt"), "--k", "8"])
    assert bad.exit_code == 2
    missing = CliRunner().invoke(cli, ["gan", "evaluate", "--generator", str(tmp_path / "no.pt")])
    assert missing.exit_code == 1 and "not found" in str(missing.exception)
