"""What the NVlabs projector comparison (benchmarks/bench_projector.py) rests on, checked
without the upstream code: its LPIPS stand-in measures Algorithm 1's feature distance, and
the generator's NVlabs twin computes the shipped generator's images away from the borders."""

from __future__ import annotations

import io

import pytest
import torch

from advmix import shipped
from advmix.checkpoints import load_generator
from advmix.encoder import perceptual_distance
from advmix.perceptual import load_features
from benchmarks.bench_projector import LpipsStandIn, compare, fir_twin, mixed_styles


def test_the_lpips_stand_in_is_algorithm_1s_feature_distance_through_vgg16_pt_interface():
    trunk = load_features("cfmnist")
    traced = torch.jit.trace(trunk, torch.zeros(1, 3, 32, 32), strict=False)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(LpipsStandIn(traced)), buffer)
    buffer.seek(0)
    vgg16 = torch.jit.load(buffer)  # what NVlabs' projector does with the file
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        fa = vgg16((a + 1) * 127.5, resize_images=False, return_lpips=True)
        fb = vgg16((b + 1) * 127.5, resize_images=False, return_lpips=True)
        expected = perceptual_distance(trunk(a), trunk(b))
    assert torch.allclose((fa - fb).square().sum(dim=1), expected, rtol=1e-4)


def test_the_nvlabs_twin_is_the_shipped_generator_inside_the_borders():
    G = load_generator(shipped.GENERATOR).eval()
    twin = fir_twin(G, steps=0)  # flipped kernels, not distilled
    assert twin.cfg.resample == "fir" and G.cfg.resample == "bilinear"
    ws = mixed_styles(G, 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = G.synthesis(ws), twin.synthesis(ws)
    inside = (a - b)[..., 12:20, 12:20].abs().mean().item()
    border = (a - b)[..., :, :2].abs().mean().item()
    assert inside < 0.05 < border  # the borders are what distilling fixes


def test_a_folder_that_is_not_the_upstream_checkout_is_refused_in_one_line(tmp_path):
    (tmp_path / "projector.py").write_text("")  # a projector alone is not the checkout
    with pytest.raises(SystemExit, match=r"not a stylegan2-ada-pytorch checkout \(no legacy.py\)"):
        compare(str(tmp_path), tmp_path / "work")
    assert not (tmp_path / "work").exists()  # refused before any work
