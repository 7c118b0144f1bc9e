"""Encode throughput: Algorithm 1 one image at a time vs batched vs the whole Beam job.

Same images, same steps, same networks in one run: the project's 32x32 generator (the shipped
checkpoint when present, else a random one of the same architecture) and the shipped VGG
trunk. The Beam figure is the wall time of ``pipeline.encode`` on the FnApiRunner, start-up,
listing and store writes included, so the ratio is what a user pays for the pipeline.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from advmix import shipped
from advmix.checkpoints import load_generator, save_generator
from advmix.datasets import load
from advmix.inversion import START_ADAM, InversionConfig, invert, mean_style
from advmix.perceptual import load_features
from advmix.stylegan import Generator, GeneratorConfig

SHIPPED = shipped.GENERATOR
NUM_IMAGES = 128
BATCH = 64
STEPS = 30
PER_IMAGE_SAMPLE = 8  # the per-image loop is timed on this many images and scaled
# On a GPU the Beam job's fixed start-up (pipeline construction, model load, store commit) is
# seconds, so the comparison needs a workload of minutes on the batched loop, not of seconds.
GPU = {"num_images": 2048, "steps": 100, "batch": 256}


def _generator(workdir: Path) -> tuple[Generator, str]:
    if SHIPPED.exists():
        return load_generator(SHIPPED), str(SHIPPED)
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, channel_base=1024, channel_max=128, k=5))
    path = workdir / "G.pt"
    save_generator(G, path)
    return G.eval().requires_grad_(False), str(path)


def run(
    device: str = "cpu",
    num_images: int = NUM_IMAGES,
    steps: int = STEPS,
    batch: int = BATCH,
    split: str = "train",
) -> dict:
    spec = f"cfmnist:{split}?limit={num_images}"
    images = torch.from_numpy(load(spec).images).float() / 127.5 - 1.0
    features = load_features("cfmnist", device=device)
    with tempfile.TemporaryDirectory() as tmp:
        G, g_path = _generator(Path(tmp))
        G = G.to(device)
        cfg = InversionConfig(steps=steps, k=G.cfg.k or 5)
        w_start = mean_style(G, cfg.w_avg_samples, cfg.seed)
        invert(G, features, images[:2], cfg, seeds=[0, 1], w_start=w_start)  # warm-up (CUDA)

        started = time.perf_counter()
        for i in range(PER_IMAGE_SAMPLE):
            invert(G, features, images[i : i + 1], cfg, seeds=[i], w_start=w_start)
        per_image_s = (time.perf_counter() - started) / PER_IMAGE_SAMPLE * num_images

        started = time.perf_counter()
        for start in range(0, num_images, batch):
            chunk = images[start : start + batch]
            seeds = list(range(start, start + len(chunk)))
            invert(G, features, chunk, cfg, seeds=seeds, w_start=w_start)
        batched_s = time.perf_counter() - started

        from pipeline.encode import run as encode

        started = time.perf_counter()
        encode(
            ["--input", spec, "--output", str(Path(tmp) / "store"), "--generator", g_path,
             "--steps", str(steps), "--batch-size", str(batch), "--shard-size", str(batch),
             "--k", str(cfg.k), "--device", device]
        )  # fmt: skip
        beam_s = time.perf_counter() - started

    return {
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "images": num_images,
        "steps": steps,
        "batch": batch,
        "generator": "shipped" if SHIPPED.exists() else "random, shipped architecture",
        "per_image_images_per_s": round(num_images / per_image_s, 2),
        "batched_images_per_s": round(num_images / batched_s, 2),
        "beam_images_per_s": round(num_images / beam_s, 2),
        "batched_speedup_vs_per_image": round(per_image_s / batched_s, 2),
        "beam_wall_vs_batched_wall": round(beam_s / batched_s, 3),
        "init": equal_quality(device=device),
    }


def equal_quality(num_images: int = 64, mean_steps: int = 100, encoder_steps: int = 20,
                  device: str = "cpu", encoder_path=None, encoder_mix_steps: int | None = 5,
                  ) -> dict:  # fmt: skip
    """Images/s and PSNR of the mean start at ``mean_steps`` (Algorithm 1 as the paper runs
    it) and the shipped encoder's start at ``encoder_steps``, the mixing loss on the last
    ``encoder_mix_steps`` of them, same images, one run, each with the encode job's optimiser
    for its start. The defaults are docs/encoding.md's point of equal quality: 20 steps from
    the encoder, 5 of them with the mixing loss, match 100 from the mean on PSNR and on class
    kept by mixes (held-out stores, "Steps without the mixing loss")."""
    if not (SHIPPED.exists() and shipped.ENCODER.exists()):
        return {"skipped": "needs the shipped generator and encoder"}
    from advmix.encoder import load_encoder

    images = torch.from_numpy(load(f"cfmnist:iid?limit={num_images}").images).float()
    images = (images / 127.5 - 1.0).to(device)
    G = load_generator(SHIPPED, map_location=device)
    features = load_features("cfmnist", device=device)
    encoder, _ = load_encoder(encoder_path or shipped.ENCODER, map_location=device)
    encoder.attach(G)
    out = {"images": num_images, "encoder_kind": encoder.cfg.kind,
           "encoder_passes": encoder.cfg.passes}  # fmt: skip
    for name, steps, mix_steps in (("mean", mean_steps, None),
                                   ("encoder", encoder_steps, encoder_mix_steps)):  # fmt: skip
        lr, betas = START_ADAM[name]
        cfg = InversionConfig(steps=steps, k=G.cfg.k, lr=lr, betas=betas, init=name,
                              mix_steps=mix_steps)  # fmt: skip
        started = time.perf_counter()
        with torch.no_grad():
            start = encoder(images) if name == "encoder" else mean_style(G, 1000, 0)
        result = invert(G, features, images, cfg, seeds=range(num_images), w_start=start)
        seconds = time.perf_counter() - started
        out[name] = {"steps": steps, "mix_steps": mix_steps,
                     "images_per_s": round(num_images / seconds, 2),
                     "psnr_db": round(float(result.rec_psnr.mean()), 2)}  # fmt: skip
    out["encoder_vs_mean_images_per_s"] = round(
        out["encoder"]["images_per_s"] / out["mean"]["images_per_s"], 2
    )
    return out
