"""StyleGAN2 generator API, checkpoints and the discriminator, on tiny real networks."""

from dataclasses import dataclass

import pytest
import torch

from advmix.checkpoints import generator_fingerprint, load_generator, save_generator
from advmix.discriminator import Discriminator, DiscriminatorConfig
from advmix.errors import AdvmixError
from advmix.layers import modulated_conv2d
from advmix.stylegan import Generator, GeneratorConfig


def tiny(resolution=32, **kw) -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(
        z_dim=16, w_dim=16, resolution=resolution, channel_base=64, channel_max=16, **kw
    )
    G = Generator(cfg).eval()
    with torch.no_grad():  # non-zero noise strengths so noise modes matter
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
    return G


@pytest.mark.parametrize("resolution, num_ws", [(8, 4), (32, 8), (64, 10)])
def test_shapes_for_several_resolutions(resolution, num_ws):
    G = tiny(resolution)
    assert G.num_ws == num_ws == G.cfg.num_ws and G.w_dim == 16
    ws = G.mapping(torch.randn(3, 16))
    assert ws.shape == (3, num_ws, 16)
    assert torch.equal(ws[:, 0], ws[:, -1])  # broadcast
    img = G.synthesis(ws)
    assert img.shape == (3, 3, resolution, resolution)
    assert G(torch.randn(1, 16)).shape == (1, 3, resolution, resolution)


def test_bad_resolution_and_bad_inputs():
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(resolution=48)
    G = tiny(8)
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(torch.zeros(2, 3, 16))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(torch.zeros(2, 4, 16), noise_mode="fixed")


def test_const_noise_is_deterministic_and_random_is_not():
    G = tiny()
    ws = G.mapping(torch.randn(2, 16))
    assert torch.equal(G.synthesis(ws), G.synthesis(ws))
    assert torch.equal(G.synthesis(ws, "none"), G.synthesis(ws, "none"))
    assert not torch.equal(G.synthesis(ws, "random"), G.synthesis(ws, "random"))
    assert not torch.equal(G.synthesis(ws, "const"), G.synthesis(ws, "none"))


def test_batch_independence_and_any_batch_size():
    G = tiny()
    ws = G.mapping(torch.randn(5, 16))
    full = G.synthesis(ws)
    for i in range(5):
        torch.testing.assert_close(G.synthesis(ws[i : i + 1]), full[i : i + 1])
    # changing one batch-mate changes nothing else
    other = ws.clone()
    other[0] = G.mapping(torch.randn(1, 16))[0]
    torch.testing.assert_close(G.synthesis(other)[1:], full[1:])


def test_synthesis_is_differentiable_wrt_ws_with_frozen_weights():
    G = tiny().requires_grad_(False)
    ws = G.mapping(torch.randn(2, 16)).requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


@pytest.mark.parametrize("noise_mode", ["const", "random"])
def test_coarse_then_fine_synthesis_is_exactly_synthesis(noise_mode):
    G = tiny()
    ws = G.mapping(torch.randn(3, 16))
    for k in range(1, G.num_ws):
        torch.manual_seed(1)  # the same random noise for both paths
        whole = G.synthesis(ws, noise_mode=noise_mode)
        torch.manual_seed(1)
        state = G.synthesis_coarse(ws[:, :k], noise_mode=noise_mode)
        assert torch.equal(G.synthesis_fine(state, ws[:, k:]), whole), k
        picked = G.synthesis_fine(state.select(torch.tensor([2, 0])), ws[[2, 0], k:])
        if noise_mode == "const":
            # another batch shape may take other kernels: equal up to float32 rounding
            torch.testing.assert_close(picked, whole[[2, 0]], msg=f"k={k}")


def test_fine_synthesis_runs_only_the_layers_that_read_a_fine_style():
    # Every AdvMix ascent iterate pays for what synthesis_fine runs: no coarse layer may rerun.
    G = tiny()
    style_of = {}
    w_idx = 0
    for block in G.synthesis_net.blocks:
        for j, layer in enumerate(block.layers()):
            style_of[layer] = w_idx + j
        style_of[block.torgb] = w_idx + block.num_conv
        w_idx += block.num_conv
    ran = []
    for layer in style_of:
        layer.register_forward_hook(lambda module, inputs, output: ran.append(module))
    ws = G.mapping(torch.randn(2, 16))
    for k in range(1, G.num_ws):
        state = G.synthesis_coarse(ws[:, :k])
        ran.clear()
        G.synthesis_fine(state, ws[:, k:])
        assert sorted(style_of[m] for m in ran) == sorted(i for i in style_of.values() if i >= k)


def test_fine_synthesis_differentiates_the_fine_styles_only_and_checks_shapes():
    G = tiny().requires_grad_(False)
    ws = G.mapping(torch.randn(2, 16))
    fine = ws[:, 4:].clone().requires_grad_(True)
    G.synthesis_fine(G.synthesis_coarse(ws[:, :4]), fine).square().mean().backward()
    assert fine.grad is not None and fine.grad.abs().sum() > 0
    for bad in (ws, ws[:, :0], ws[0]):
        with pytest.raises(ValueError, match="ws_coarse must be"):
            G.synthesis_coarse(bad)
    with pytest.raises(ValueError, match="ws_fine must be"):
        G.synthesis_fine(G.synthesis_coarse(ws[:, :4]), ws[:, 3:])


def test_mix_takes_coarse_from_a_and_fine_from_b():
    a, b = torch.zeros(2, 8, 4), torch.ones(2, 8, 4)
    m = Generator.mix(a, b, 3)
    assert torch.equal(m[:, :3], a[:, :3]) and torch.equal(m[:, 3:], b[:, 3:])
    assert torch.equal(Generator.mix(a, b, 0), b) and torch.equal(Generator.mix(a, b, 8), a)
    with pytest.raises(ValueError):
        Generator.mix(a, b, 9)
    G = tiny()
    wa, wb = G.mapping(torch.randn(1, 16)), G.mapping(torch.randn(1, 16))
    mixed = G.synthesis(Generator.mix(wa, wb, G.num_ws))
    torch.testing.assert_close(mixed, G.synthesis(wa))


def test_w_avg_updates_only_in_training_mode_and_truncation():
    G = tiny()
    before = G.w_avg.clone()
    G.mapping(torch.randn(4, 16))
    assert torch.equal(G.w_avg, before)
    G.train().mapping(torch.randn(4, 16))
    assert not torch.equal(G.w_avg, before)
    G.eval()
    ws0 = G.mapping(torch.randn(2, 16), truncation_psi=0.0)
    torch.testing.assert_close(ws0, G.w_avg.expand_as(ws0))


def test_grouped_and_non_grouped_modulated_conv_agree():
    torch.manual_seed(1)
    x, w, s = torch.randn(3, 5, 8, 8), torch.randn(7, 5, 3, 3), torch.randn(3, 5)
    for demod in (True, False):
        a = modulated_conv2d(x, w, s, demodulate=demod, padding=1)
        b = modulated_conv2d(x, w, s, demodulate=demod, padding=1, grouped=True)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_checkpoint_round_trip_and_fingerprint(tmp_path):
    G = tiny()
    G.cfg.k = 5
    fp = save_generator(G, tmp_path / "g.pt", extra={"iterations": 3})
    assert fp == generator_fingerprint(G) and len(fp) == 64
    H = load_generator(tmp_path / "g.pt")
    assert H.cfg == G.cfg and H.cfg.k == 5
    assert generator_fingerprint(H) == fp
    z = torch.randn(2, 16)
    torch.testing.assert_close(H(z), G(z), rtol=0, atol=0)
    # same content, different file: same fingerprint; different weights: different one
    assert save_generator(H, tmp_path / "h.pt") == fp
    with torch.no_grad():
        H.synthesis_net.blocks[0].const.add_(1)
    assert generator_fingerprint(H) != fp


@dataclass
class CustomConfig:
    z_dim: int = 1


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_unsafe_and_bad_files_are_refused_with_one_line(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "advmix-stylegan2-generator", "x": CustomConfig()}, unsafe)
    evil = tmp_path / "evil.pt"
    torch.save(Payload(), evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    tensors = tmp_path / "tensors.pt"
    torch.save({"a": torch.zeros(1)}, tensors)
    for path, match in [
        (unsafe, "refused"),
        (evil, "refused"),
        (garbage, "not a readable"),
        (tensors, "not an advmix generator"),
        (tmp_path / "missing.pt", "not found"),
    ]:
        with pytest.raises(AdvmixError, match=match) as info:
            load_generator(path)
        assert "\n" not in str(info.value)


def test_tampered_weights_are_detected(tmp_path):
    G = tiny(8)
    save_generator(G, tmp_path / "g.pt")
    data = torch.load(tmp_path / "g.pt", weights_only=True)
    data["state_dict"]["synthesis_net.blocks.0.const"] += 1
    torch.save(data, tmp_path / "t.pt")
    with pytest.raises(AdvmixError, match="fingerprint mismatch"):
        load_generator(tmp_path / "t.pt")
    del data["state_dict"]["synthesis_net.blocks.0.const"]
    torch.save(data, tmp_path / "m.pt")
    with pytest.raises(AdvmixError, match="do not match"):
        load_generator(tmp_path / "m.pt")


@pytest.mark.parametrize("resolution", [8, 32])
def test_discriminator_shapes_and_gradients(resolution):
    D = Discriminator(DiscriminatorConfig(resolution=resolution, channel_base=64, channel_max=16))
    x = torch.randn(6, 3, resolution, resolution, requires_grad=True)
    out = D(x)
    assert out.shape == (6, 1)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    g.square().sum().backward()
    assert D(torch.randn(5, 3, resolution, resolution)).shape == (5, 1)  # odd batch
