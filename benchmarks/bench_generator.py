"""Generator forward+backward throughput at batch 64: non-grouped vs grouped modulated conv.

Both variants compute the same function (``tests/test_stylegan.py`` checks they agree); the
non-grouped one scales activations instead of building a per-sample weight tensor, so it uses
one dense convolution for the whole batch. Measured on the shipped 32x32 architecture
(gradients w.r.t. the styles only, as in inversion and AdvMix attacks) in the same run, and
reported as images/s and their ratio.
"""

from __future__ import annotations

import time

import torch

from advmix.stylegan import Generator, GeneratorConfig

BATCH = 64
CONFIG = dict(z_dim=128, w_dim=128, resolution=32, channel_base=1024, channel_max=128)


def _images_per_s(G: Generator, ws: torch.Tensor, repeats: int) -> float:
    def once() -> None:
        w = ws.detach().requires_grad_(True)
        G.synthesis(w).square().mean().backward()

    once()  # warm-up
    best = float("inf")
    for _ in range(repeats):  # best of several rounds: robust to other jobs on the machine
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return BATCH / best


def run(repeats: int = 3) -> dict:
    torch.manual_seed(0)
    non_grouped = Generator(GeneratorConfig(**CONFIG)).requires_grad_(False)
    grouped = Generator(GeneratorConfig(**CONFIG, grouped=True)).requires_grad_(False)
    grouped.load_state_dict(non_grouped.state_dict())
    ws = non_grouped.mapping(torch.randn(BATCH, 128))
    results = {}
    for _ in range(2):  # interleave to share any drift in machine load
        for name, G in (("non_grouped", non_grouped), ("grouped", grouped)):
            results[name] = max(results.get(name, 0.0), _images_per_s(G, ws, repeats))
    return {
        "batch": BATCH,
        "config": CONFIG,
        "threads": torch.get_num_threads(),
        "non_grouped_images_per_s": round(results["non_grouped"], 1),
        "grouped_images_per_s": round(results["grouped"], 1),
        "speedup_non_grouped_over_grouped": round(results["non_grouped"] / results["grouped"], 2),
    }
