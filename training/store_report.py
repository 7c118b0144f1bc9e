"""``advmix store report``: how good are a store's latents? (Algorithm 1's output, measured)

For the first N samples: PSNR of the reconstruction ``dec(w)`` against the stored source image;
the rate at which a colour-blind classifier trained on real images gives the reconstruction,
and a mix with random fine styles ``dec(w_coarse, map(z)_fine)``, the true class; the rate at
which the mix's colour follows the random fine source; and a PNG grid of originals over
reconstructions over mixes.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch
from torchvision.utils import save_image

from advmix.classifiers import load_classifier
from advmix.stylegan import generator_fingerprint, load_generator, seeded_z
from schemas.reader import open_store
from training.cli_gan import SHIPPED_CLASSIFIER
from training.gan_eval import decode, foreground_colour, predict
from training.params import storage_options

GRID_COLUMNS = 16


def _first_samples(store, limit: int):
    w, labels, images = [], [], []
    for shard in store.iter_shards():
        w.append(shard.w), labels.append(shard.labels), images.append(shard.images)
        if sum(len(x) for x in labels) >= limit:
            break
    cut = lambda parts: np.concatenate(parts)[:limit]  # noqa: E731
    return cut(w), cut(labels), cut(images)


def encoding_report(store, G, classifier, limit: int = 512, seed: int = 0) -> dict:
    """Metrics of the first ``limit`` samples, plus the image tensors for the grid."""
    if store.manifest.layout.image_shape is None:
        raise click.ClickException("this store keeps no source images to compare against")
    w, labels, images = _first_samples(store, limit)
    k = store.manifest.provenance.k
    ws = torch.from_numpy(w.astype(np.float32))
    originals = torch.from_numpy(images).float() / 255.0
    random_styles = G.mapping(seeded_z(len(ws), G.cfg.z_dim, seed))
    recon = decode(G, ws).clamp(0, 1)
    mixes = decode(G, G.mix(ws, random_styles, k)).clamp(0, 1)
    fine_sources = decode(G, random_styles).clamp(0, 1)

    mse = (recon - originals).square().flatten(1).mean(1).clamp_min(1e-10)
    psnr = 10 * torch.log10(1 / mse)
    truth = torch.from_numpy(labels)
    colour_mix, colour_src, colour_own = (
        foreground_colour(x) for x in (mixes, fine_sources, originals)
    )
    follows = (colour_mix - colour_src).norm(dim=1) < (colour_mix - colour_own).norm(dim=1)
    metrics = {
        "samples": len(ws),
        "k": k,
        "psnr_mean_db": round(float(psnr.mean()), 2),
        "psnr_median_db": round(float(psnr.median()), 2),
        "classifier_accuracy_on_originals": _rate(predict(classifier, originals) == truth),
        "class_kept_reconstruction": _rate(predict(classifier, recon) == truth),
        "class_kept_random_mix": _rate(predict(classifier, mixes) == truth),
        "colour_follows_random_fine_source": _rate(follows),
    }
    return metrics, (originals, recon, mixes)


def _rate(hits: torch.Tensor) -> float:
    return round(float(hits.float().mean()), 4)


def save_grid(rows: tuple[torch.Tensor, ...], path: Path) -> None:
    shown = torch.cat([r[:GRID_COLUMNS] for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(shown, str(path), nrow=min(GRID_COLUMNS, len(rows[0])), padding=2)


@click.command("report")
@click.argument("url")
@click.option("--generator", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option(
    "--classifier",
    type=click.Path(exists=True, dir_okay=False),
    default=str(SHIPPED_CLASSIFIER),
    help="Real-data classifier (advmix gan train-classifier); default: the shipped gray one.",
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=512, help="Samples measured.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--seed", type=int, default=0, help="Seed of the random fine styles.")
@storage_options
def report(url, generator, classifier, limit, grid, json_out, seed, storage_options) -> None:
    """Reconstruction and mixing quality of the latents in the store at URL."""
    G = load_generator(generator)
    store = open_store(url, storage_options, expect_generator=generator_fingerprint(G))
    model, _ = load_classifier(classifier)
    with torch.no_grad():
        metrics, rows = encoding_report(store, G, model, limit, seed)
    if grid is not None:
        save_grid(rows, grid)
        metrics["grid"] = str(grid)
    text = json.dumps(metrics, indent=2)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    click.echo(text)
