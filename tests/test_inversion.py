"""Algorithm 1 on a tiny random generator: it fits, it is batch-independent, it validates k."""

import pytest
import torch

from advmix.errors import AdvmixError
from advmix.inversion import InversionConfig, invert, mean_style
from advmix.perceptual import FeatureConfig, VGGFeatures
from advmix.stylegan import Generator, GeneratorConfig


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=16, z_dim=32, w_dim=32, channel_max=32, k=3))
    features = VGGFeatures(FeatureConfig(width=0.125))
    return G.eval().requires_grad_(False), features.eval().requires_grad_(False)


def _targets(G, n=3, seed=1):
    with torch.no_grad():
        z = torch.randn(n, G.cfg.z_dim, generator=torch.Generator().manual_seed(seed))
        return G(z).clamp(-1, 1)


def test_inversion_improves_reconstruction(nets):
    G, features = nets
    targets = _targets(G)
    start = invert(G, features, targets, InversionConfig(steps=0, w_avg_samples=64))
    fitted = invert(G, features, targets, InversionConfig(steps=40, lr=0.05, w_avg_samples=64))
    assert fitted.ws.shape == (3, G.num_ws, G.cfg.w_dim)
    assert (fitted.rec_psnr > start.rec_psnr + 3.0).all()
    assert (fitted.loss < start.loss).all()


def test_each_image_is_independent_of_its_batch(nets):
    G, features = nets
    targets = _targets(G, n=4)
    cfg = InversionConfig(steps=5, w_avg_samples=64, seed=3)
    together = invert(G, features, targets, cfg, seeds=[10, 11, 12, 13])
    alone = invert(G, features, targets[2:3], cfg, seeds=[12])
    torch.testing.assert_close(alone.ws[0], together.ws[2], atol=1e-4, rtol=1e-4)
    other_seed = invert(G, features, targets[2:3], cfg, seeds=[99])
    assert not torch.allclose(other_seed.ws[0], together.ws[2])  # the mixing noise matters


def test_mix_steps_put_the_mixing_loss_on_the_last_steps_only(nets):
    G, features = nets
    targets = _targets(G, n=2)

    def fit(mix_steps, seeds):
        cfg = InversionConfig(steps=4, lr=0.05, w_avg_samples=64, mix_steps=mix_steps)
        return invert(G, features, targets, cfg, seeds=seeds).ws

    # no mixing loss: its random fine styles cannot move the walk
    torch.testing.assert_close(fit(0, [1, 2]), fit(0, [7, 8]))
    # on the last step only: they do
    assert not torch.allclose(fit(1, [1, 2]), fit(1, [7, 8]))
    # at least as many as the steps: every step, Algorithm 1
    torch.testing.assert_close(fit(4, [1, 2]), fit(None, [1, 2]))
    assert InversionConfig(steps=4, mix_steps=1).to_dict()["mix_steps"] == 1
    assert "mix_steps" not in InversionConfig(steps=4).to_dict()  # as stores written before


def test_starts_from_the_mean_latent(nets):
    G, features = nets
    result = invert(G, features, _targets(G, n=2), InversionConfig(steps=0, w_avg_samples=64))
    expected = mean_style(G, 64, 0)
    torch.testing.assert_close(result.ws[1], expected)


@pytest.mark.parametrize("k", [0, 8])
def test_split_outside_the_styles_is_refused(nets, k):
    G, features = nets
    with pytest.raises(AdvmixError, match="must be in 1..5"):
        invert(G, features, _targets(G, n=1), InversionConfig(steps=1, k=k, w_avg_samples=8))
