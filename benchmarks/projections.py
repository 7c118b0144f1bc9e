"""AdvMix's projection sets measured on real assets: how often each fools a classifier, and how
far its styles end from real ``map(z)`` styles (nearest-neighbour distance, relative to held-out
real styles). Needs a trained generator, a store it encoded and a classifier, so it is not part
of ``make bench``:

    python -m benchmarks.projections STORE GENERATOR CLASSIFIER [N]
"""

from __future__ import annotations

import json
import sys
import time


def measure_projections(store_url, generator_path, classifier_path, n=256, steps=5) -> dict:
    import torch

    from advmix import attacks
    from advmix.checkpoints import generator_fingerprint, load_generator
    from advmix.projections import PROJECTIONS, sample_fine
    from training.evaluate import load_model
    from training.stream import LatentStream

    torch.set_num_threads(1)
    G = load_generator(generator_path)
    model, _ = load_model(classifier_path)
    stream = LatentStream(
        store_url, batch_size=n, shuffle=False, buffer_size=0,
        expect_generator=generator_fingerprint(G),
    )  # fmt: skip
    k = stream.store.k
    batch = next(iter(stream.loader()))
    w, y = batch["w"], batch["label"]
    bank = sample_fine(G, k, 5000, torch.Generator().manual_seed(123)).flatten(1)
    held = sample_fine(G, k, 500, torch.Generator().manual_seed(456)).flatten(1)

    def nn_dist(q):
        return torch.cdist(q.flatten(1), bank).min(dim=1).values

    reference = float(nn_dist(held).median())
    out = {"samples": len(y), "k": k, "steps": steps, "heldout_nn_dist": round(reference, 4)}
    images, ws = attacks.randmix(G, w, k, torch.Generator().manual_seed(0))
    with torch.no_grad():
        fooled = model(images).argmax(1) != y
    out["randmix"] = {
        "fooled": round(float(fooled.float().mean()), 4),
        "nn_dist_ratio": round(float(nn_dist(ws[:, k:]).median()) / reference, 3),
    }
    for kind, projection in PROJECTIONS.items():
        cfg = attacks.AdvMixConfig(steps=steps, projection=kind)
        style_set = projection.fit(G, k, cfg, seed=0)
        started = time.perf_counter()
        result = attacks.advmix(model, G, w, y, k, style_set, cfg, torch.Generator().manual_seed(0))
        out[kind] = {
            "fooled": round(float(result.fooled.float().mean()), 4),
            "nn_dist_ratio": round(float(nn_dist(result.ws[:, k:]).median()) / reference, 3),
            "evaluations": result.evaluations,
            "attack_s": round(time.perf_counter() - started, 2),
        }
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(measure_projections(*args[:3], n=int(args[3]) if len(args) > 3 else 256),
                     indent=2))  # fmt: skip
