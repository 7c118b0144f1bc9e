"""The same commands on a CUDA device: skipped where there is none (CI), run on a GPU machine
with ``python -m pytest tests/test_cuda.py`` (``benchmarks/on_gpu.py`` does).

GPU kernels (TF32 convolutions, other reduction orders) do not reproduce CPU bits, and Adam's
first steps move each coordinate by about +-lr whatever the gradient's size, so these tests
compare what a user reads (reconstruction error, completeness, accuracy), not raw latents.
"""

import numpy as np
import pytest
import torch

from advmix.attacks import AdvMixConfig
from advmix.checkpoints import load_generator
from advmix.datasets import load
from advmix.errors import AdvmixError
from advmix.inversion import InversionConfig, invert
from advmix.perceptual import load_features
from advmix.stylegan import Generator, GeneratorConfig, to_unit
from pipeline.encode import run as encode
from schemas.reader import open_store
from tests.tiny_nets import tiny_features, tiny_generator
from tests.train_helpers import write_store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPEC = "cfmnist:iid?limit=32"


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    return tiny_generator(root / "G.pt"), tiny_features(root / "F.pt")


def _images(n: int = 8) -> torch.Tensor:
    return torch.from_numpy(load(SPEC).images[:n]).float() / 127.5 - 1.0


def _invert(nets, device: str, images: torch.Tensor, seeds):
    G = load_generator(nets[0]).to(device)
    features = load_features(str(nets[1]), device=device)
    cfg = InversionConfig(steps=20, w_avg_samples=64)
    return invert(G, features, images, cfg, seeds=seeds)


def test_inversion_on_cuda_matches_cpu_quality_and_ignores_batch_mates(nets):
    images = _images()
    seeds = list(range(len(images)))
    cpu = _invert(nets, "cpu", images, seeds)
    gpu = _invert(nets, "cuda", images, seeds)
    alone = _invert(nets, "cuda", images[3:4], seeds[3:4])
    assert gpu.ws.device.type == "cpu" and torch.isfinite(gpu.ws).all()
    np.testing.assert_allclose(gpu.rec_psnr.numpy(), cpu.rec_psnr.numpy(), atol=0.5)
    np.testing.assert_allclose(alone.rec_psnr.numpy(), gpu.rec_psnr[3:4].numpy(), atol=0.5)


def test_coarse_fine_split_equals_full_synthesis_on_cuda():
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, z_dim=32, w_dim=32, channel_max=32, k=4)).cuda()
    ws = G.mapping(torch.randn(6, 32, device="cuda"))
    with torch.no_grad():
        full = G.synthesis(ws, noise_mode="const")
        for k in range(1, G.num_ws):
            split = G.synthesis_fine(G.synthesis_coarse(ws[:, :k], noise_mode="const"), ws[:, k:])
            torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-4)


def test_encode_job_on_cuda_writes_the_same_store_as_on_cpu(nets, tmp_path):
    G, F = nets

    def job(device):
        out = tmp_path / device
        args = [
            "--input", SPEC, "--output", str(out), "--generator", str(G), "--features", str(F),
            "--steps", "5", "--batch-size", "16", "--shard-size", "16",
            "--w-avg-samples", "64", "--device", device,
        ]  # fmt: skip
        counts = encode(args)
        return counts, open_store(str(out), full_check=True)

    (cpu_counts, cpu), (gpu_counts, gpu) = job("cpu"), job("cuda")
    for counts in (cpu_counts, gpu_counts):
        assert (counts["read"], counts["encoded"], counts["rejected"]) == (32, 32, 0)
    a, b = cpu.index(), gpu.index()
    assert a["id"].tolist() == b["id"].tolist()
    np.testing.assert_allclose(b["rec_psnr"], a["rec_psnr"], atol=0.5)


def test_encode_job_refuses_a_cuda_device_that_does_not_exist(nets, tmp_path):
    G, F = nets
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(AdvmixError, match="CUDA device"):
        encode(["--input", SPEC, "--output", str(tmp_path / "s"), "--generator", str(G),
                "--features", str(F), "--steps", "1", "--device", missing])  # fmt: skip


@pytest.mark.parametrize("method", ["advmix", "randmix", "at"])
def test_training_on_cuda_and_the_checkpoint_loads_on_cpu(nets, tmp_path, method):
    from training.config import TrainConfig
    from training.evaluate import load_model
    from training.train import Trainer

    G = load_generator(nets[0])
    store = write_store(str(tmp_path / "s.zarr"), num_samples=64, generator=G,
                        fingerprint=_fingerprint(G))  # fmt: skip
    cfg = TrainConfig(store=store, generator=str(nets[0]), method=method, epochs=1,
                      batch_size=16, attack=AdvMixConfig(steps=2), width=8)  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run", device="cuda")
    trainer.train()
    assert next(trainer.model.parameters()).device.type == "cuda"
    model, _ = load_model(tmp_path / "run" / "checkpoint.pt", "cpu")
    x = to_unit(G.synthesis(torch.from_numpy(open_store(store).read_shard(0).w)))
    assert torch.isfinite(model(x)).all()


def _fingerprint(G):
    from advmix.checkpoints import generator_fingerprint

    return generator_fingerprint(G)
