"""How good are a store's latents? Algorithm 1's output, measured (``advmix store report``).

For the first N samples: PSNR of the reconstruction ``dec(w)`` against the stored source image;
the rate at which a colour-blind classifier trained on real images gives the reconstruction,
and a mix with random fine styles ``dec(w_coarse, map(z)_fine)``, the true class; the rate at
which the mix's colour follows the random fine source; and a PNG grid of originals over
reconstructions over mixes. Given a trained classifier, also the worst-case mixes AdvMix finds
against it, judged by the same colour-blind classifier: a mix that fools the trained classifier
but no longer shows its class to the judge is label noise, not a lesson about colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from advmix import attacks
from advmix.attacks import AdvMixConfig
from advmix.classifiers import predict
from advmix.datasets import foreground_colour
from advmix.errors import AdvmixError
from advmix.projections import fit_style_set
from advmix.stylegan import decode, seeded_z

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
        raise AdvmixError(f"{store.url} keeps no source images to compare against")
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


def advmix_report(store, G, model, judge, cfg: AdvMixConfig, limit: int = 512, seed: int = 0,
                  batch: int = 128) -> dict:  # fmt: skip
    """AdvMix's mixes against ``model`` (a classifier trained on this store's labels) for the
    first ``limit`` samples: how often one fools it, and how often ``judge`` still gives the
    mix its class, over all of them and over those that fool ``model``."""
    if model.cfg.targets:
        raise AdvmixError("--against judges mixes by class; this classifier predicts attributes "
                          f"({', '.join(model.cfg.targets)})")  # fmt: skip
    w, labels, _ = _first_samples(store, limit)
    k = store.manifest.provenance.k
    style_set = fit_style_set(G, k, cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    fooled, kept = [], []
    for i in range(0, len(w), batch):
        ws = torch.from_numpy(w[i : i + batch].astype(np.float32))
        y = torch.from_numpy(labels[i : i + batch])
        result = attacks.advmix(model, G, ws, y, k, style_set, cfg, gen)
        with torch.no_grad():
            kept.append(predict(judge, result.images) == y)
        fooled.append(result.fooled.cpu())
    fooled_all, kept_all = torch.cat(fooled), torch.cat(kept)
    return {
        "advmix_samples": len(fooled_all),
        "advmix_fooled": _rate(fooled_all),
        "class_kept_advmix_mix": _rate(kept_all),
        "class_kept_advmix_mix_that_fools": _rate(kept_all[fooled_all])
        if bool(fooled_all.any())
        else None,
    }


def _rate(hits: torch.Tensor) -> float:
    return round(float(hits.float().mean()), 4)


def save_grid(rows: tuple[torch.Tensor, ...], path: Path) -> None:
    shown = torch.cat([r[:GRID_COLUMNS] for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(shown, str(path), nrow=min(GRID_COLUMNS, len(rows[0])), padding=2)
