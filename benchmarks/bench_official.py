"""Real-resolution cost: the official StyleGAN2 configurations, as imported generators run.

Random weights in the architecture of NVlabs' configs (``resample="fir"``, fp16 layers in
fp32): ``paper256`` (256 px: channel base 16384, max 512, 8 mapping layers, conv_clamp 256)
and ``stylegan2`` (config F, 1024 px: channel base 32768). Per image, at a small batch:

- ``synthesis_ms``: ``G.synthesis(ws)`` without gradients (what decoding a mix costs);
- ``inversion_step_ms``: one step of Algorithm 1 (reconstruction and mixing loss through a
  full-width VGG16 to conv3_2, backward to W+, Adam), what encoding costs per step.

On the CPU ``run()`` measures 256 px; ``python -m benchmarks.on_gpu`` measures 256 and 1024 px.
"""

from __future__ import annotations

import json
import time

import torch

from advmix.inversion import InversionConfig, invert
from advmix.perceptual import FeatureConfig, VGGFeatures
from advmix.stylegan import Generator, GeneratorConfig

CONFIGS = {
    256: dict(z_dim=512, w_dim=512, resolution=256, mapping_layers=8, channel_base=16384,
              channel_max=512, conv_clamp=256.0, resample="fir", k=6),
    1024: dict(z_dim=512, w_dim=512, resolution=1024, mapping_layers=8, channel_base=32768,
               channel_max=512, conv_clamp=256.0, resample="fir", k=8),
}  # fmt: skip


def _best_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and CUDA kernel loads)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def measure(resolution: int = 256, device: str = "cpu", batch: int = 2, repeats: int = 2) -> dict:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(**CONFIGS[resolution])).to(device).eval().requires_grad_(False)
    features = VGGFeatures(FeatureConfig(width=1.0)).to(device).eval().requires_grad_(False)
    ws = G.mapping(torch.randn(batch, G.z_dim, device=device))
    targets = G.synthesis(G.mapping(torch.randn(batch, G.z_dim, device=device))).clamp(-1, 1)

    def synthesis():
        with torch.no_grad():
            G.synthesis(ws)

    def one_step():
        invert(G, features, targets, InversionConfig(steps=1, w_avg_samples=64), w_start=ws[0])

    one_step_ms = _best_ms(one_step, repeats)
    zero_step_ms = _best_ms(
        lambda: invert(G, features, targets, InversionConfig(steps=0, w_avg_samples=64),
                       w_start=ws[0]), repeats)  # fmt: skip
    return {
        "resolution": resolution,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "parameters_M": round(sum(p.numel() for p in G.parameters()) / 1e6, 1),
        "synthesis_ms_per_image": round(_best_ms(synthesis, repeats) / batch, 1),
        # one step, less the fixed cost of a call (target features, the final loss)
        "inversion_step_ms_per_image": round((one_step_ms - zero_step_ms) / batch, 1),
    }


def run() -> dict:
    return {"256px": measure(256, "cpu")}


if __name__ == "__main__":  # the docs' `python -m benchmarks.bench_official`
    print(json.dumps(run(), indent=2))
