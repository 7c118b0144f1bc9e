"""Where Algorithm 1 starts, measured: quality and speed against steps, mean init vs encoder init.

For each init (the mean style, as in the paper; an amortised encoder's prediction) and each
step count, Algorithm 1 (mixing loss included) inverts the same real images, and we measure
what the store would hold: reconstruction PSNR, the rate at which the shipped colour-blind
classifier gives the true class to the reconstruction and to a mix with random fine styles,
and images/s (the encoder's passes included: an iterative encoder decodes between them).
Needs the full Fashion-MNIST:

    python -m benchmarks.init_curve --encoder advmix/assets/cfmnist-E.pt --out curve.json
    python -m benchmarks.init_curve --images 128 --offset 5000 --steps 0,2,5,10 --out c.json
    python -m benchmarks.init_curve --inits encoder --steps 20 --mix-steps 5 --out c.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from advmix import shipped
from advmix.checkpoints import load_generator
from advmix.classifiers import load_classifier, predict
from advmix.datasets import load
from advmix.encoder import load_encoder
from advmix.inversion import (
    START_ADAM,
    WARM_START_BETAS,
    WARM_START_LR,
    InversionConfig,
    invert,
    mean_style,
)
from advmix.perceptual import load_features
from advmix.stylegan import decode, seeded_z

STEPS = (0, 2, 5, 10, 20, 40, 100)


def measure_point(G, features, classifier, encoder, images, labels, steps: int, batch: int,
                  encoder_lr: float = WARM_START_LR,
                  encoder_betas: tuple[float, float] = WARM_START_BETAS,
                  mix_steps: int | None = None):  # fmt: skip
    """Quality and images/s of one (init, steps) point over all ``images``; ``mix_steps``:
    the encoder start's mixing loss on the last steps only (the mean start keeps it on all)."""
    init = "encoder" if encoder else "mean"
    lr, betas = (encoder_lr, encoder_betas) if encoder is not None else START_ADAM["mean"]
    mix_steps = mix_steps if encoder is not None else None
    cfg = InversionConfig(steps=steps, k=G.cfg.k, init=init, lr=lr, betas=betas,
                          mix_steps=mix_steps)  # fmt: skip
    mean = mean_style(G, cfg.w_avg_samples, cfg.seed)
    ws, psnr = [], []
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        with torch.no_grad():
            start = encoder(x) if encoder is not None else mean
        result = invert(G, features, x, cfg, seeds=range(i, i + len(x)), w_start=start)
        ws.append(result.ws)
        psnr.append(result.rec_psnr)
    seconds = time.perf_counter() - started
    ws = torch.cat(ws)
    with torch.no_grad():
        recon = decode(G, ws)
        mixes = decode(G, G.mix(ws, G.mapping(seeded_z(len(ws), G.z_dim, 0)), G.cfg.k))
    return {
        "steps": steps,
        **({"mix_steps": mix_steps} if mix_steps is not None else {}),
        "psnr_db": round(float(torch.cat(psnr).mean()), 2),
        "class_kept_reconstruction": round(
            float((predict(classifier, recon) == labels).float().mean()), 4
        ),
        "class_kept_random_mix": round(
            float((predict(classifier, mixes) == labels).float().mean()), 4
        ),
        "images_per_s": round(len(images) / seconds, 2),
    }


def run(encoder_path: str, num_images: int = 512, batch: int = 64, steps=STEPS,
        inits=("mean", "encoder"), encoder_lr: float = WARM_START_LR, offset: int = 0,
        encoder_betas: tuple[float, float] = WARM_START_BETAS,
        mix_steps: int | None = None) -> dict:  # fmt: skip
    torch.manual_seed(0)
    G = load_generator(shipped.GENERATOR)
    features = load_features("cfmnist")
    classifier, _ = load_classifier(shipped.GRAY_CLASSIFIER)
    encoder, info = load_encoder(encoder_path)
    encoder.attach(G)
    spec = f"cfmnist:iid?limit={num_images}" + (f"&offset={offset}" if offset else "")
    data = load(spec)
    images = torch.from_numpy(data.images).float() / 127.5 - 1.0
    labels = torch.from_numpy(data.labels)
    with torch.no_grad():
        originals = predict(classifier, (images + 1) / 2)
    out = {"images": spec, "batch": batch, "k": G.cfg.k,
           "threads": torch.get_num_threads(), "encoder": info["fingerprint"],
           "encoder_kind": encoder.cfg.kind, "encoder_passes": encoder.cfg.passes,
           "classifier_on_originals": round(float((originals == labels).float().mean()), 4),
           "encoder_lr": encoder_lr, "encoder_betas": list(encoder_betas)}  # fmt: skip
    for name, enc in (("mean", None), ("encoder", encoder)):
        if name not in inits:
            continue
        out[name] = []
        for n in steps:
            point = measure_point(G, features, classifier, enc, images, labels, n, batch,
                                  encoder_lr, encoder_betas, mix_steps)  # fmt: skip
            print(json.dumps({"init": name, **point}), flush=True)
            out[name].append(point)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=str(shipped.ENCODER))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--offset", type=int, default=0, help="first test image")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--inits", default="mean,encoder")
    parser.add_argument("--encoder-lr", type=float, default=WARM_START_LR)
    parser.add_argument("--encoder-betas", default=",".join(map(str, WARM_START_BETAS)))
    parser.add_argument("--mix-steps", type=int, default=None,
                        help="from the encoder: the mixing loss on the last N steps only")  # fmt: skip
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    steps = tuple(int(s) for s in args.steps.split(","))
    result = run(args.encoder, args.images, steps=steps, inits=args.inits.split(","),
                 encoder_lr=args.encoder_lr, offset=args.offset,
                 encoder_betas=tuple(float(b) for b in args.encoder_betas.split(",")),
                 mix_steps=args.mix_steps)  # fmt: skip
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
