"""The peer, side by side: NVlabs' projector against the encoder's start plus a short Algorithm 1.

A user who wants StyleGAN latents for their images would otherwise run NVlabs
stylegan2-ada-pytorch's ``projector.py``: one image at a time, 1000 Adam steps on a single W
(and the noise maps), an LPIPS VGG16. Here its ``project()`` runs as shipped, from a checkout
the user names (``--upstream``; its code never enters the project), on an NVlabs pickle of
the generator our side inverts, on the same real images; both sides on one CPU thread. We
report the PSNR of each side's final image and images/s, and ours / theirs at the fewest of
our steps whose PSNR is at least theirs.

The generator. The shipped one upsamples bilinearly, which NVlabs' architecture cannot
express, so both sides run its NVlabs twin (``fir_twin``): the same weights with each
up-convolution's kernel flipped (NVlabs upsamples with a transposed convolution), which
computes the same away from the borders, then distilled toward the shipped generator's
images so the borders agree too (cached in ``--work``). The twin is exported
(``advmix.exporters``), NVlabs' code builds and pickles its network
(``benchmarks/nvlabs_projector.py``), and the project imports that pickle back, checked
against the twin. Our side starts from the shipped encoder, which was trained for the
bilinear generator, not for the twin.

Their LPIPS network, ``vgg16.pt``, is downloaded from NVIDIA at run time. Where it cannot be
(this project's machines), ``--vgg16`` names a local copy; without one, a stand-in with its
interface (our shipped feature trunk, giving Algorithm 1's feature distance) goes into
dnnlib's download cache for the run, and the results say which one ran.

    python -m benchmarks.bench_projector --upstream ~/src/stylegan2-ada-pytorch --out peer.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from advmix import shipped
from advmix.checkpoints import generator_fingerprint, load_generator, save_generator
from advmix.datasets import load
from advmix.encoder import load_encoder
from advmix.exporters import nvlabs_layout
from advmix.importers import import_generator
from advmix.inversion import START_ADAM, InversionConfig, invert
from advmix.perceptual import load_features
from advmix.stylegan import Generator

VGG16_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
OUR_STEPS = (0, 10, 20, 40, 100)
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# The generator both sides run


def fir_twin(G: Generator, steps: int = 1500, batch: int = 32, seed: int = 0) -> Generator:
    """``G`` (bilinear) as NVlabs' architecture: kernels flipped, then ``steps`` of Adam on
    the squared difference to ``G``'s images of style-mixed latents (module docstring)."""
    twin = Generator(dataclasses.replace(G.cfg, resample="fir"))
    twin.load_state_dict({key: value.flip([2, 3]) if key.endswith("conv0.weight") else value
                          for key, value in G.state_dict().items()})  # fmt: skip
    twin.mapping_net.requires_grad_(False)
    optimiser = torch.optim.Adam(twin.synthesis_net.parameters(), lr=3e-4)
    draws = torch.Generator().manual_seed(seed)
    for step in range(steps):
        ws = mixed_styles(G, batch, draws)
        with torch.no_grad():
            target = G.synthesis(ws, noise_mode="const")
        loss = (twin.synthesis(ws, noise_mode="const") - target).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if (step + 1) % 250 == 0:
            print(f"twin: step {step + 1}/{steps}, squared difference {loss.item():.5f}",
                  flush=True)  # fmt: skip
    return twin.eval().requires_grad_(False)


def mixed_styles(G: Generator, n: int, draws: torch.Generator) -> Tensor:
    """W+ of ``n`` pairs of mapped latents crossed at a random style index each."""
    with torch.no_grad():
        a = G.mapping(torch.randn(n, G.z_dim, generator=draws))
        b = G.mapping(torch.randn(n, G.z_dim, generator=draws))
    crossover = torch.randint(1, G.num_ws, (n, 1, 1), generator=draws)
    return torch.where(torch.arange(G.num_ws)[None, :, None] < crossover, a, b)


def psnr_between(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR [N] of images in [-1, 1] (clamped), in [0, 1] units as Algorithm 1's."""
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).square().flatten(1).mean(dim=1) / 4.0
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def twin_of_shipped(work: Path, steps: int) -> tuple[Generator, dict]:
    """The shipped generator's twin, distilled once and kept in ``work``."""
    G = load_generator(shipped.GENERATOR).eval().requires_grad_(False)
    path = work / f"twin-{steps}.pt"
    if not path.exists():
        save_generator(fir_twin(G, steps), path,
                       extra={"twin_of": generator_fingerprint(G), "distill_steps": steps})  # fmt: skip
    twin = load_generator(path).eval().requires_grad_(False)
    ws = mixed_styles(G, 256, torch.Generator().manual_seed(1))
    with torch.no_grad():
        agreement = psnr_between(twin.synthesis(ws), G.synthesis(ws))
    return twin, {"distill_steps": steps, "psnr_to_shipped_db": round(float(agreement.mean()), 2)}


# ----------------------------------------------------------------------------------------------
# NVlabs' side


class LpipsStandIn(nn.Module):
    """NVlabs' ``vgg16.pt`` interface over our feature trunk: images in [0, 255] -> each tap's
    channel-normalised features over sqrt(positions), concatenated, so the squared distance
    of two outputs is Algorithm 1's feature distance (mean over positions, sum over taps)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(
        self, img: Tensor, resize_images: bool = True, return_lpips: bool = False
    ) -> Tensor:
        parts = []
        for f in self.trunk(img / 127.5 - 1.0):
            unit = f / (f.square().sum(dim=1, keepdim=True).sqrt() + 1e-8)
            parts.append(unit.flatten(1) / math.sqrt(f.shape[2] * f.shape[3]))
        return torch.cat(parts, dim=1)


def vgg16_cache(work: Path, vgg16: str | None) -> str:
    """Fill a dnnlib download cache in ``work`` with ``vgg16`` or the stand-in; which one."""
    downloads = work / "dnnlib-cache" / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    for old in downloads.glob("*"):
        old.unlink()
    cached = downloads / f"{hashlib.md5(VGG16_URL.encode()).hexdigest()}_vgg16.pt"
    if vgg16:
        cached.write_bytes(Path(vgg16).read_bytes())
        return f"NVlabs vgg16.pt ({vgg16})"
    trunk = load_features("cfmnist")
    traced = torch.jit.trace(trunk, torch.zeros(1, 3, 32, 32), strict=False)
    torch.jit.save(torch.jit.script(LpipsStandIn(traced)), str(cached))
    return "stand-in: the shipped feature trunk behind vgg16.pt's interface"


def upstream(args: list[str], work: Path, checkout: str) -> None:
    env = {**os.environ, "DNNLIB_CACHE_DIR": str(work / "dnnlib-cache")}
    command = [sys.executable, "-m", "benchmarks.nvlabs_projector", "--upstream", checkout, *args]
    done = subprocess.run(command, cwd=ROOT, env=env)
    if done.returncode:
        raise SystemExit(f"NVlabs' code failed on {args[0]} (exit {done.returncode}; its output "
                         "is above)")  # fmt: skip


def check_checkout(checkout: str) -> None:
    missing = [name for name in ("projector.py", "legacy.py", "training/networks.py")
               if not (Path(checkout) / name).is_file()]  # fmt: skip
    if missing:
        raise SystemExit(f"{checkout}: not a stylegan2-ada-pytorch checkout (no {missing[0]})")


# ----------------------------------------------------------------------------------------------
# Our side


def ours(G: Generator, encoder, features, images: Tensor, steps: int) -> dict:
    """The encoder's start and ``steps`` of Algorithm 1 with the encode job's warm-start
    optimiser, all images in one batch."""
    lr, betas = START_ADAM["encoder"]
    started = time.perf_counter()
    with torch.no_grad():
        start = encoder(images)
    cfg = InversionConfig(steps=steps, lr=lr, betas=betas, init="encoder", k=G.cfg.k)
    result = invert(G, features, images, cfg, w_start=start)
    seconds = time.perf_counter() - started
    return {"steps": steps, "psnr_db": round(float(result.rec_psnr.mean()), 2),
            "images_per_s": round(len(images) / seconds, 3)}  # fmt: skip


# ----------------------------------------------------------------------------------------------


def compare(checkout: str, work: Path, num_images: int = 16, offset: int = 5000,
            their_steps: int = 1000, our_steps=OUR_STEPS, distill_steps: int = 1500,
            vgg16: str | None = None) -> dict:  # fmt: skip
    check_checkout(checkout)
    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    twin, twin_facts = twin_of_shipped(work, distill_steps)
    init_kwargs, state = nvlabs_layout(twin)
    torch.save({"init_kwargs": json.dumps(init_kwargs), "state_dict": state}, work / "layout.pt")
    upstream(["pickle", str(work / "layout.pt"), str(work / "G.pkl")], work, checkout)
    G = import_generator(work / "G.pkl", k=twin.cfg.k).generator.eval().requires_grad_(False)
    probe = mixed_styles(G, 64, torch.Generator().manual_seed(2))
    with torch.no_grad():
        import_error = (G.synthesis(probe) - twin.synthesis(probe)).abs().max().item()

    data = load(f"cfmnist:iid?limit={num_images}&offset={offset}")
    np.save(work / "targets.npy", data.images)
    images = torch.from_numpy(data.images).float() / 127.5 - 1.0
    which_vgg = vgg16_cache(work, vgg16)
    lpips = "vgg16" if vgg16 else "stand-in"
    projected = work / f"nvlabs-{their_steps}-steps-{num_images}-from-{offset}-{lpips}.npz"
    if projected.exists():  # their side is the slow one: kept, as the twin is
        print(f"reusing {projected}", flush=True)
    else:
        upstream(["project", str(work / "G.pkl"), str(work / "targets.npy"), str(projected),
                  "--steps", str(their_steps)], work, checkout)  # fmt: skip
    theirs_out = np.load(projected)
    their_images = torch.from_numpy(theirs_out["images"])
    with torch.no_grad():
        rerendered = G.synthesis(torch.from_numpy(theirs_out["ws"]), noise_mode="const")
    theirs = {"steps": their_steps, "images": num_images,
              "psnr_db": round(float(psnr_between(their_images, images).mean()), 2),
              "images_per_s": round(num_images / float(theirs_out["seconds"].sum()), 4)}  # fmt: skip

    features = load_features("cfmnist")
    encoder = load_encoder(shipped.ENCODER)[0].attach(G)  # loaded once, outside the timings
    points = [ours(G, encoder, features, images, steps) for steps in our_steps]
    level = next((p for p in points if p["psnr_db"] >= theirs["psnr_db"]), None)
    theirs["our_import_rerenders_their_w_max_abs_diff"] = (
        (rerendered - their_images).abs().max().item()
    )
    equal = None if level is None else {
        "our_steps": level["steps"],
        "images_per_s_ratio": round(level["images_per_s"] / theirs["images_per_s"], 1),
    }  # fmt: skip
    return {
        "generator": {**twin_facts, "import_max_abs_diff": import_error},
        "lpips_network": which_vgg,
        "images": f"cfmnist:iid?limit={num_images}&offset={offset}",
        "threads": 1,
        "theirs": theirs,
        "ours": points,
        "ours_over_theirs_at_equal_or_better_psnr": equal,
    }


def run() -> dict:
    """``make bench``'s figure, when ``NVLABS_STYLEGAN2_ADA`` names a checkout."""
    checkout = os.environ.get("NVLABS_STYLEGAN2_ADA")
    if not checkout:
        return {"skipped": "set NVLABS_STYLEGAN2_ADA to a stylegan2-ada-pytorch checkout"}
    return compare(checkout, ROOT / "runs" / "peer-projector")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="a stylegan2-ada-pytorch checkout")
    parser.add_argument("--work", type=Path, default=Path("runs/peer-projector"))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--offset", type=int, default=5000)
    parser.add_argument("--their-steps", type=int, default=1000)
    parser.add_argument("--our-steps", default=",".join(map(str, OUR_STEPS)))
    parser.add_argument("--distill-steps", type=int, default=1500)
    parser.add_argument("--vgg16", default=None, help="a local copy of NVlabs' vgg16.pt")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = compare(args.upstream, args.work, args.images, args.offset, args.their_steps,
                     [int(s) for s in args.our_steps.split(",")], args.distill_steps,
                     args.vgg16)  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
