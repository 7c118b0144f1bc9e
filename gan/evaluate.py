"""Is a generator fit for AdvMix? Disentanglement and realism metrics (``advmix gan evaluate``).

All measured with a small classifier trained on real data (no downloads):

- ``class_kept[k]``: over pairs (A, B) whose predicted classes differ, the rate at which the
  colour-blind (``gray-max``) classifier gives ``mix(A, B, k)`` A's class.
  ``class_kept_confident_a[k]`` is the same over pairs whose A the classifier gives > 0.8
  probability (a diagnostic: most flips are between coat, pullover and shirt, which the
  classifier also confuses on real images).
- ``colour_follows[k]``: over pairs whose foreground colours differ (distance > 0.25), the rate
  at which the mix's mean foreground colour is nearer B's than A's.
- ``fd_features``: Frechet distance between the classifier's penultimate features of generated
  images and of real held-out images (``real_spec``, by default ``cfmnist:random``; FID-style,
  shape realism), with the same distance from a second real set (``baseline_spec``, the
  training split) as a floor; ``fd_colour``: the same on foreground colours.

The split ``k`` is chosen as the one that maximises ``min(class_kept, colour_follows)``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advmix.classifiers import ClassifierConfig, SmallCNN, predict
from advmix.datasets import foreground_colour
from advmix.stylegan import Generator, decode, seeded_z

COLOUR_MIN_DISTANCE = 0.25
CONFIDENT = 0.8  # diagnostic: class kept over pairs whose A the classifier is sure about


# ----------------------------------------------------------------------------------------------
# The evaluation classifier


def train_classifier(
    train_spec: str,
    test_spec: str,
    epochs: int = 3,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    input_mode: str = "gray-max",
    width: int = 32,
    progress: bool = True,
    data_root: str | None = None,
) -> tuple[SmallCNN, dict]:
    """Train a SmallCNN on real images; returns (model, {"test_accuracy", ...})."""
    from tqdm import tqdm

    from advmix.datasets import load

    torch.manual_seed(seed)
    train, test = load(train_spec, data_root), load(test_spec, data_root)
    in_ch = 1 if input_mode == "gray-max" else 3
    model = SmallCNN(cfg=ClassifierConfig(len(train.label_names), in_ch, width, input_mode))
    x_all = torch.from_numpy(train.images)
    y_all = torch.from_numpy(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(y_all) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    started = time.perf_counter()
    bar = tqdm(total=steps, disable=not progress, unit="step")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y_all))
        for i in range(len(y_all) // batch):
            idx = perm[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(x_all[idx].float() / 255), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    preds = predict(model, torch.from_numpy(test.images).float() / 255)
    acc = float((preds == torch.from_numpy(test.labels)).float().mean())
    info = {
        "train": train_spec,
        "test": test_spec,
        "epochs": epochs,
        "test_accuracy": round(acc, 4),
        "train_wall_s": round(time.perf_counter() - started, 1),
        "label_names": list(train.label_names),
    }
    return model, info


@torch.no_grad()
def probabilities(model: SmallCNN, images01: Tensor, batch: int = 500) -> Tensor:
    return torch.cat([torch.softmax(model(images01[i : i + batch]), dim=1)
                      for i in range(0, len(images01), batch)])  # fmt: skip


@torch.no_grad()
def features(model: SmallCNN, images01: Tensor, batch: int = 500) -> Tensor:
    return torch.cat([model.features(images01[i : i + batch])
                      for i in range(0, len(images01), batch)])  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Measurements


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa Sb)^1/2), float64, via symmetric eigens."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev, vec = np.linalg.eigh(sa)
    sqrt_a = (vec * np.sqrt(np.clip(ev, 0, None))) @ vec.T
    middle = np.linalg.eigvalsh(sqrt_a @ sb @ sqrt_a)
    tr_sqrt = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


def _limited(spec: str, n: int) -> str:
    return f"{spec}{'&' if '?' in spec else '?'}limit={n}"


def _rate(hits: Tensor) -> float | None:
    """Mean of a boolean tensor, rounded; None when there is nothing to count."""
    return round(hits.float().mean().item(), 4) if hits.numel() else None


@torch.no_grad()
def evaluate_generator(
    G: Generator,
    classifier: SmallCNN,
    pairs: int = 1000,
    fd_samples: int = 2000,
    seed: int = 0,
    truncation_psi: float = 1.0,
    real_spec: str = "cfmnist:random",
    baseline_spec: str = "cfmnist:train-random",
    data_root: str | None = None,
) -> dict:
    from advmix.datasets import load

    G = G.eval()
    started = time.perf_counter()
    ws_a = G.mapping(seeded_z(pairs, G.z_dim, seed), truncation_psi=truncation_psi)
    ws_b = G.mapping(seeded_z(pairs, G.z_dim, seed + 1), truncation_psi=truncation_psi)
    img_a, img_b = decode(G, ws_a), decode(G, ws_b)
    prob_a = probabilities(classifier, img_a)
    cls_a, cls_b = prob_a.argmax(1), predict(classifier, img_b)
    confident = prob_a.max(1).values > CONFIDENT
    col_a, col_b = foreground_colour(img_a), foreground_colour(img_b)
    cls_differ = cls_a != cls_b
    col_differ = (col_a - col_b).norm(dim=1) > COLOUR_MIN_DISTANCE
    per_k = {}
    for k in range(1, G.num_ws):
        mixed = decode(G, Generator.mix(ws_a, ws_b, k))
        cls_m, col_m = predict(classifier, mixed), foreground_colour(mixed)
        kept = _rate((cls_m == cls_a)[cls_differ])
        kept_confident = _rate((cls_m == cls_a)[cls_differ & confident])
        to_b = _rate((cls_m == cls_b)[cls_differ])
        d_a, d_b = (col_m - col_a).norm(dim=1), (col_m - col_b).norm(dim=1)
        follows = _rate((d_b < d_a)[col_differ])
        per_k[k] = {
            "class_kept": kept,
            "class_kept_confident_a": kept_confident,
            "class_follows_b": to_b,
            "colour_follows": follows,
            "score": min(kept or 0.0, follows or 0.0),
        }
    best_k = max(per_k, key=lambda k: (per_k[k]["score"], k))

    # Realism: features of generated vs real test images, and two real sets as the floor.
    n = fd_samples
    fake = decode(G, G.mapping(seeded_z(n, G.z_dim, seed + 2), truncation_psi=truncation_psi))
    real = torch.from_numpy(load(_limited(real_spec, n), data_root).images).float() / 255
    base = torch.from_numpy(load(_limited(baseline_spec, n), data_root).images).float() / 255
    f_fake, f_real, f_base = (features(classifier, x).numpy() for x in (fake, real, base))
    c_fake, c_real, c_base = (foreground_colour(x).numpy() for x in (fake, real, base))
    hist = torch.bincount(predict(classifier, fake), minlength=classifier.cfg.num_classes)
    return {
        "num_ws": G.num_ws,
        "pairs": pairs,
        "pairs_class_differs": int(cls_differ.sum()),
        "pairs_colour_differs": int(col_differ.sum()),
        "pairs_class_differs_confident_a": int((cls_differ & confident).sum()),
        "truncation_psi": truncation_psi,
        "per_k": {str(k): v for k, v in per_k.items()},
        "chosen_k": best_k,
        "chosen": per_k[best_k],
        "real": real_spec,
        "real_floor": baseline_spec,
        "fd_features": round(frechet_distance(f_fake, f_real), 3),
        "fd_features_real_floor": round(frechet_distance(f_base, f_real), 3),
        "fd_colour": round(frechet_distance(c_fake, c_real), 4),
        "fd_colour_real_floor": round(frechet_distance(c_base, c_real), 4),
        "generated_class_fractions": [round(float(h) / n, 3) for h in hist],
        "fd_samples": n,
        "eval_wall_s": round(time.perf_counter() - started, 1),
    }
