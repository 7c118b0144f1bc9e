"""What the IRM study measures besides accuracy: the data's statistics on a store, what the
generator's mixes do to irmcf images, and the record of a study-trained generator."""

from __future__ import annotations

import json
from pathlib import Path

from advmix import shipped


def record_generator(G: str, records: Path) -> None:
    """records/gan.json: how the study's generator was trained and what ``advmix gan
    evaluate`` measured on it (its model card's numbers); and its sample and style-mixing
    grids at the chosen k, when they lie beside it."""
    import shutil

    from advmix.checkpoints import generator_fingerprint, load_generator, read_generator_checkpoint

    extra = read_generator_checkpoint(G)["extra"]
    train = extra.get("train_config", {})
    card = {"fingerprint": generator_fingerprint(load_generator(G)), "k": extra["evaluate"]["chosen_k"],
            "dataset": train.get("dataset"), "init_from": train.get("init_from"),
            "iterations": extra.get("iteration"), "images_seen": extra.get("images_seen"),
            "train_wall_s": extra.get("train_wall_s"), "evaluate": extra["evaluate"]}  # fmt: skip
    (records / "gan.json").write_text(json.dumps(card, indent=2) + "\n")
    for name in ("samples.png", f"mixing-k{card['k']}.png"):
        if (Path(G).parent / name).exists():
            shutil.copyfile(Path(G).parent / name, records / f"gan-{name}")


def store_statistics(store: Path) -> dict:
    """What the construction should give, measured on a store's own images, labels and env
    column: per environment, its size, the share of positives and of images whose colour
    agrees with their label."""
    import numpy as np

    from advmix.irmcf import colour_of
    from schemas.reader import open_store

    reader = open_store(str(store))
    shards = [reader.read_shard(i) for i in range(reader.num_shards)]
    labels = np.concatenate([s.labels for s in shards])
    colours = np.concatenate([colour_of(s.images) for s in shards])
    has_env = "env" in (reader.attribute_names or ())
    envs = (np.concatenate([s.attributes[:, reader.attribute_names.index("env")] for s in shards])
            if has_env else np.zeros(len(labels), dtype=int))  # fmt: skip
    out = {}
    for env in np.unique(envs):
        mine = envs == env
        key = f"env {int(env)}" if has_env else "test"
        out[key] = {"n": int(mine.sum()), "positives": round(float(labels[mine].mean()), 4),
                    "colour_agrees": round(float((colours[mine] == labels[mine]).mean()), 4),
                    "colourless": int((colours[mine] < 0).sum())}  # fmt: skip
    return out


def colour_names(images01) -> list[str]:
    """ "red", "green" or "other" per image [B, 3, H, W] in [0, 1]: red (green) when that
    channel of its mean foreground colour exceeds both others by 0.3. Items whose pixels are
    mostly dim (grey in both channels) can read as "other" even unmixed: the originals'
    shares are the rule's baseline."""
    from advmix.datasets import foreground_colour

    names = []
    for r, g, b in foreground_colour(images01).tolist():
        names.append("red" if r > max(g, b) + 0.3 else "green" if g > max(r, b) + 0.3 else "other")
    return names


def mix_diagnostics(store: Path, G_path: str, n: int = 512, seed: int = 0) -> dict:
    """What the generator's fine styles do to irmcf images: the stored reconstructions' PSNR,
    the colours of the originals and of RandMix mixes (one random map(z) for styles k..),
    and whether the shipped colour-blind 10-class classifier calls the mix footwear when it
    calls the original footwear (class kept)."""
    import numpy as np
    import torch

    from advmix.attacks import randmix
    from advmix.checkpoints import load_generator
    from advmix.classifiers import load_classifier
    from advmix.irmcf import FOOTWEAR
    from advmix.stylegan import resolve_k
    from schemas.reader import open_store

    torch.set_num_threads(1)
    reader = open_store(str(store))
    G = load_generator(G_path)
    k = resolve_k(G, reader.k)
    shard = reader.read_shard(0)
    w, images = torch.from_numpy(shard.w[:n]).float(), torch.from_numpy(shard.images[:n]) / 255.0
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mixes = torch.cat([randmix(G, w[i : i + 64], k, gen)[0] for i in range(0, len(w), 64)])
        grey, _ = load_classifier(shipped.GRAY_CLASSIFIER)
        shoe = [np.isin(grey(x).argmax(1).numpy(), FOOTWEAR) for x in (images, mixes)]
    before, after = colour_names(images), colour_names(mixes)

    def share(names: list[str], colour: str) -> float:
        return round(sum(x == colour for x in names) / len(names), 4)

    return {
        "k": k, "num_ws": G.num_ws, "images": len(w),
        "reconstruction_psnr_db": round(float(reader.index()["rec_psnr"].mean()), 2),
        "originals": {c: share(before, c) for c in ("red", "green", "other")},
        "mixes": {c: share(after, c) for c in ("red", "green", "other")},
        "colour_changed": round(float(np.mean([a != b for a, b in zip(before, after, strict=True)])), 4),
        "class_kept": round(float((shoe[0] == shoe[1]).mean()), 4),
    }  # fmt: skip
