"""VGG16 feature taps and every way of loading their weights, on weights made here."""

import collections

import pytest
import torch
import torchvision

from advmix.perceptual import FeatureConfig, FeatureWeightsError, VGGFeatures, load_features


def _torchvision_taps(model: torchvision.models.VGG, images: torch.Tensor) -> list[torch.Tensor]:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x, out = ((images + 1) / 2 - mean) / std, []
    for index, layer in enumerate(model.features[:14]):
        x = layer(x)
        if index in (3, 8, 13):
            out.append(x.clone())
    return out


def test_taps_have_vgg16_shapes():
    feats = VGGFeatures()(torch.zeros(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    half = VGGFeatures(FeatureConfig(width=0.5))(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1] for f in half] == [32, 64, 128]


def test_torchvision_state_dict_gives_torchvision_activations(tmp_path):
    reference = torchvision.models.vgg16().eval()
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    net = load_features(str(path))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for ours, theirs in zip(net(images), _torchvision_taps(reference, images), strict=True):
            torch.testing.assert_close(ours, theirs)
    assert not any(p.requires_grad for p in net.parameters())


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    reference = torchvision.models.vgg16().eval()
    torch.save(reference.state_dict(), cache / "vgg16-397923af.pth")
    net = load_features("imagenet")
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net(images)[2], _torchvision_taps(reference, images)[2])


def test_corrupt_cached_imagenet_weights_are_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "vgg16-397923af.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FeatureWeightsError, match="ImageNet VGG16 weights") as info:
        load_features("imagenet")
    assert "\n" not in str(info.value)


class _Payload:
    pass


@pytest.mark.parametrize(
    "content, message",
    [
        ({"features.0.weight": torch.zeros(1)}, "do not fit VGG16"),
        (collections.OrderedDict(evil=_Payload()), "not a plain tensor state dict"),
    ],
)
def test_bad_weight_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(FeatureWeightsError, match=message) as info:
        load_features(str(path))
    assert "\n" not in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FeatureWeightsError, match="cannot read perceptual weights"):
        load_features(str(tmp_path / "absent.pt"))


def test_shipped_cfmnist_features_load():
    net = load_features("cfmnist")
    assert net.cfg.width == 0.5 and net.cfg.source == "cfmnist"
    assert [f.shape[1] for f in net(torch.zeros(1, 3, 32, 32))] == [32, 64, 128]
